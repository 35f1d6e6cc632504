//! The cluster: several giftd nodes serving the same rooms over one NATS (with JetStream) and
//! one PostgreSQL ledger. Off unless `cluster.nats_url` is set; a single node is a cluster of one
//! whose room link goes nowhere (`fanout.rs`).
//!
//! Who owns what:
//! - **A room's sequencer** runs on exactly one node, the holder of the room's **lease**: a key
//!   in the JetStream key-value bucket `<namespace>_rooms`, created if absent when the room opens
//!   (so of two nodes opening the same room at once exactly one wins; the other gets
//!   `room_exists`) and renewed by its owner every third of `cluster.lease_ms`, each time with the
//!   room's current summary, which is what `GET /rooms` lists on every node. A lease that is not
//!   renewed expires with the bucket's `max_age`. The owner takes commands only while its lease
//!   is certain, a quarter of the lease short of its expiry (the fence, `cluster/link.rs`).
//! - **Events** go from the sequencer's link (`cluster/link.rs`) through one bounded, ordered
//!   queue per node to the room's subject `<namespace>.room.<id>.events`. Every other node with
//!   members in the room keeps a replica (`room/replica.rs`) whose relay delivers them, checked
//!   by `seq`, to its own members.
//! - **Commands** from members on other nodes (gifts, questions, answers, thank-yous, closing)
//!   are forwarded verbatim to `<namespace>.room.<id>.commands`, run by the owner exactly as its
//!   own members' commands (ledger first, then the event), and the ack or error comes back as
//!   the owner encoded it (`cluster/remote.rs`). So are the joins of other nodes' members, which
//!   get their snapshot, or their missed events from the owner's history, the same way.
//! - **Private messages** (thank-yous, answers) go to `<namespace>.user.<user>`, which every
//!   node relays to the user's connections on it.
//! - **Viewer counts**: each node reports its members per relayed room to the owner once per
//!   `rooms.viewer_count_interval_ms`; the owner's count is the cluster's.

pub mod link;
pub mod remote;
pub mod takeover;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Config, RoomsConfig};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, OutKind};
use crate::protocol::Frame;
use crate::room::replica::Replica;
use crate::room::{Room, RoomSummary};

use link::{Outgoing, HEADER_KIND, HEADER_ORIGIN};

/// What a room's lease key holds: its owner and its latest summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub summary: RoomSummary,
}

impl Lease {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("leases serialize"))
    }
}

/// A room this node owns.
struct Owned {
    /// The revision of the claim: the room's term on this node.
    term: u64,
    revision: u64,
    /// When the latest confirmed write of the lease was sent.
    renewed: Instant,
    /// Stops the room's command service.
    stop: CancellationToken,
}

pub struct Cluster {
    pub node_id: String,
    namespace: String,
    client: async_nats::Client,
    leases: kv::Store,
    /// Every room's latest events, for takeovers.
    events: jetstream::stream::Stream,
    events_per_room_max: usize,
    lease: Duration,
    request_timeout: Duration,
    owned: DashMap<String, Owned>,
    replicas: DashMap<String, Arc<Replica>>,
    outgoing: mpsc::Sender<Outgoing>,
    /// Taken by the publisher task when the node starts.
    outgoing_rx: std::sync::Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// Bounds the forwarded commands this node runs at once.
    remote_permits: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Cluster {
    /// Connects to NATS and opens (or creates) the lease bucket.
    pub async fn connect(whole: &Config, metrics: Arc<Metrics>) -> Result<Arc<Cluster>> {
        let config = &whole.cluster;
        let node_id = if config.node_id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            config.node_id.clone()
        };
        let unavailable = |e: &dyn std::fmt::Display| Error::RoomUnavailable(format!("NATS: {e}"));
        let client = async_nats::ConnectOptions::new()
            .name(format!("giftd {node_id}"))
            .connect(config.nats_url.as_str())
            .await
            .map_err(|e| unavailable(&e))?;
        let js = jetstream::new(client.clone());
        let bucket = format!("{}_rooms", config.namespace);
        let leases = open_lease_bucket(&js, &bucket, Duration::from_millis(config.lease_ms))
            .await
            .map_err(|e| unavailable(&e))?;
        let events_per_room_max = whole.rooms.history_events_max.max(1);
        let events = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{}_events", config.namespace),
                description: Some("giftd room events, kept for takeovers".into()),
                subjects: vec![format!("{}.room.*.events", config.namespace)],
                max_messages_per_subject: events_per_room_max as i64,
                max_age: Duration::from_millis(config.events_kept_ms),
                storage: jetstream::stream::StorageType::File,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::Old,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let (outgoing, outgoing_rx) = mpsc::channel(config.publish_queue_events);
        metrics.cluster_connected.set(1);
        Ok(Arc::new(Cluster {
            node_id,
            namespace: config.namespace.clone(),
            client,
            leases,
            events,
            events_per_room_max,
            lease: Duration::from_millis(config.lease_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            owned: DashMap::new(),
            replicas: DashMap::new(),
            outgoing,
            outgoing_rx: std::sync::Mutex::new(Some(outgoing_rx)),
            remote_permits: Arc::new(tokio::sync::Semaphore::new(config.remote_commands_max)),
            metrics,
        }))
    }

    fn events_subject(&self, room: &str) -> String {
        format!("{}.room.{room}.events", self.namespace)
    }

    fn commands_subject(&self, room: &str) -> String {
        format!("{}.room.{room}.commands", self.namespace)
    }

    fn user_subject(&self, user: &str) -> String {
        format!("{}.user.{user}", self.namespace)
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Starts the node's cluster tasks: the publisher, the private-message relay and the lease
    /// keeper. They stop with the node.
    pub async fn start(app: &Arc<App>) -> Result<()> {
        let cluster = app
            .cluster
            .as_ref()
            .expect("started only in a cluster")
            .clone();
        let rx = cluster
            .outgoing_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("started once");
        tokio::spawn(link::publish_outgoing(cluster.clone(), rx));
        let private = cluster
            .client
            .subscribe(format!("{}.user.>", cluster.namespace))
            .await
            .map_err(|e| Error::RoomUnavailable(format!("NATS: {e}")))?;
        tokio::spawn(relay_private(app.clone(), private));
        tokio::spawn(keep_leases(app.clone()));
        Ok(())
    }

    /// Queues a private frame for the user's connections on other nodes.
    pub fn send_to_user(&self, user: &str, kind: OutKind, frame: &Frame) {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_ORIGIN, self.node_id.as_str());
        headers.insert(HEADER_KIND, kind.label());
        self.queue(Outgoing {
            subject: self.user_subject(user),
            headers,
            payload: Bytes::from(frame.clone()),
            numbered_at: None,
            hold: None,
        });
    }

    /// Queues one message for NATS; counts it as dropped if the queue is full.
    fn queue(&self, message: Outgoing) {
        match self.outgoing.try_send(message) {
            Ok(()) => self.metrics.cluster_publish_queue_events.inc(),
            Err(_) => {
                tracing::warn!("the NATS publish queue is full; a message was dropped");
                self.metrics.cluster_publish_dropped.inc();
            }
        }
    }

    /// Whether the publish queue has a quarter of its room left: below that, rooms refuse new
    /// commands with `room_busy`.
    fn has_room(&self) -> bool {
        self.outgoing.capacity() * 4 >= self.outgoing.max_capacity()
    }

    /// Makes `room` the cluster's: claims its lease (failing with `room_exists` if another node
    /// holds it), registers it on this node and starts serving other nodes' commands for it.
    pub async fn open(app: &Arc<App>, room: Room) -> Result<Arc<Room>> {
        let cluster = app.cluster.as_ref().expect("a cluster").clone();
        let id = room.id.clone();
        if app.rooms.get(&id).is_some() {
            return Err(Error::RoomExists(id));
        }
        let Some(claim) = cluster.claim(&room.summary()).await? else {
            return Err(Error::RoomExists(id));
        };
        let room = match app.rooms.open(room) {
            Ok(room) => room,
            Err(e) => {
                let _ = cluster.leases.delete(&id).await;
                return Err(e);
            }
        };
        cluster.serve(app, room.clone(), claim);
        Ok(room)
    }

    /// How long after a lease write was sent this node may still sequence the room: a quarter
    /// of the lease short of its expiry, for the clocks' drift and for a command admitted just
    /// before the fence to finish.
    fn sequencing_window(&self) -> Duration {
        self.lease - self.lease / 4
    }

    /// Claims the lease of the room `summary` describes for this node, subscribed to its
    /// commands first so that no forwarded command can find the room unserved. `None` if another
    /// node holds the lease.
    async fn claim(&self, summary: &RoomSummary) -> Result<Option<Claim>> {
        let commands = self
            .client
            .subscribe(self.commands_subject(&summary.room))
            .await
            .map_err(|e| Error::RoomUnavailable(format!("NATS: {e}")))?;
        let lease = Lease {
            node: self.node_id.clone(),
            summary: summary.clone(),
        };
        let sent = Instant::now();
        match self.leases.create(&summary.room, lease.encode()).await {
            Ok(revision) => Ok(Some(Claim {
                commands,
                revision,
                sent,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(Error::RoomUnavailable(format!("NATS: {e}"))),
        }
    }

    /// Records `room`, whose lease this node claimed, as this node's, lets it take commands
    /// for as long as the claim is certain, and starts serving other nodes' commands for it.
    fn serve(&self, app: &Arc<App>, room: Arc<Room>, claim: Claim) {
        let stop = CancellationToken::new();
        self.owned.insert(
            room.id.clone(),
            Owned {
                term: claim.revision,
                revision: claim.revision,
                renewed: claim.sent,
                stop: stop.clone(),
            },
        );
        room.hold(claim.revision, claim.sent + self.sequencing_window());
        tokio::spawn(remote::serve_room(app.clone(), room, claim.commands, stop));
    }

    /// Lets go of a room this node closed: stops its command service and deletes its lease.
    pub fn release(self: &Arc<Self>, room: &str) {
        if let Some((id, owned)) = self.owned.remove(room) {
            owned.stop.cancel();
            let cluster = self.clone();
            tokio::spawn(async move {
                let _ = cluster
                    .leases
                    .delete_expect_revision(&id, Some(owned.revision))
                    .await;
            });
        }
    }

    /// The lease of `room`, if some node runs it.
    pub(crate) async fn lease_of(&self, room: &str) -> Result<Option<Lease>> {
        let value = self
            .leases
            .get(room)
            .await
            .map_err(|e| Error::RoomUnavailable(format!("NATS: {e}")))?;
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// This node's replica of `room`, run by another node: the live one, or a new one.
    pub async fn replica(
        self: &Arc<Self>,
        room: &str,
        rooms: &RoomsConfig,
    ) -> Result<Arc<Replica>> {
        if let Some(r) = self.replicas.get(room).map(|r| r.clone()) {
            if !r.is_closed() {
                return Ok(r);
            }
        }
        let lease = self
            .lease_of(room)
            .await?
            .ok_or_else(|| Error::RoomNotFound(room.to_owned()))?;
        let events = self
            .client
            .subscribe(self.events_subject(room))
            .await
            .map_err(|e| Error::RoomUnavailable(format!("NATS: {e}")))?;
        // The subscription is in force at the server before anything is asked of the owner, so
        // every event numbered after the owner answers reaches the relay.
        self.client
            .flush()
            .await
            .map_err(|e| Error::RoomUnavailable(format!("NATS: {e}")))?;
        let replica = Arc::new(Replica::new(&lease.summary, rooms)?);
        let entry = self
            .replicas
            .entry(room.to_owned())
            .and_modify(|r| {
                if r.is_closed() {
                    *r = replica.clone();
                }
            })
            .or_insert_with(|| replica.clone())
            .clone();
        if Arc::ptr_eq(&entry, &replica) {
            self.metrics.cluster_replicas.inc();
            let relay = tokio::spawn(replica.clone().relay(events, self.clone()));
            replica.set_relay(relay.abort_handle());
        }
        Ok(entry)
    }

    /// Forgets a replica whose room this node took over; its hub lives on in the room. Returns
    /// whether it was still registered.
    fn forget_replica(&self, replica: &Arc<Replica>) -> bool {
        let forgotten = self
            .replicas
            .remove_if(&replica.id, |_, r| Arc::ptr_eq(r, replica))
            .is_some();
        if forgotten {
            self.metrics.cluster_replicas.dec();
        }
        forgotten
    }

    /// Forgets a replica that ended (closed, resynced or empty), and stops it.
    pub(crate) fn drop_replica(&self, replica: &Arc<Replica>) {
        if self.forget_replica(replica) {
            replica.stop();
        }
    }

    /// Sends a request about `room` to its owner and waits for the answer.
    async fn request(&self, room: &str, payload: Bytes) -> Result<Bytes> {
        let request = self.client.request(self.commands_subject(room), payload);
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(message)) => Ok(message.payload),
            Ok(Err(e)) => Err(Error::RoomUnavailable(e.to_string())),
            Err(_) => Err(Error::RoomUnavailable(format!(
                "no answer within {} ms",
                self.request_timeout.as_millis()
            ))),
        }
    }

    /// Reports this node's members of every relayed room to the rooms' owners, and forgets
    /// replicas that no longer have members. Called once per viewer-count interval.
    pub fn report_replicas(&self) {
        let replicas: Vec<Arc<Replica>> = self.replicas.iter().map(|r| r.clone()).collect();
        for replica in replicas {
            let counts = replica.counts();
            let report = remote::Request::Report {
                node: self.node_id.clone(),
                counts,
            };
            self.queue(Outgoing {
                subject: self.commands_subject(&replica.id),
                headers: HeaderMap::new(),
                payload: report.encode(),
                numbered_at: None,
                hold: None,
            });
            if counts.viewers + counts.streamers == 0 && replica.stop_if_empty() {
                self.forget_replica(&replica);
            }
        }
    }

    /// Sends a notice (a request without an answer, such as a red packet's end) to the node
    /// that runs `room`, through the ordered queue.
    pub fn notify_room(&self, room: &str, notice: &remote::Request) {
        self.queue(Outgoing {
            subject: self.commands_subject(room),
            headers: HeaderMap::new(),
            payload: notice.encode(),
            numbered_at: None,
            hold: None,
        });
    }

    /// Every room of the cluster, as their owners last renewed them.
    pub async fn rooms(&self) -> Result<Vec<RoomSummary>> {
        let unavailable = |e: &dyn std::fmt::Display| Error::RoomUnavailable(format!("NATS: {e}"));
        let mut keys = self.leases.keys().await.map_err(|e| unavailable(&e))?;
        let mut rooms = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable(&e))?;
            if let Some(lease) = self.lease_of(&key).await? {
                rooms.push(lease.summary);
            }
        }
        rooms.sort_by(|a, b| b.viewers.cmp(&a.viewers).then_with(|| a.room.cmp(&b.room)));
        Ok(rooms)
    }
}

/// A lease this node just created.
struct Claim {
    /// The room's forwarded commands, subscribed to before the claim.
    commands: async_nats::Subscriber,
    revision: u64,
    /// When the create was sent: the lease expires no earlier than a lease after this.
    sent: Instant,
}

/// Opens the lease bucket, creating it if this is the cluster's first node.
///
/// The bucket's stream is created here, in the layout of a JetStream key-value bucket, rather
/// than by `create_key_value`, whose account query does not parse the answer of the NATS 2.9
/// servers that Debian ships; the key-value operations on it work with every 2.9+ server.
async fn open_lease_bucket(
    js: &jetstream::Context,
    bucket: &str,
    lease: Duration,
) -> std::result::Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("giftd room leases".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: lease,
        // On disk, so leases outlive a NATS restart shorter than the lease.
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    };
    // Another node may create it at the same moment; then opening it below succeeds.
    let _ = js.get_or_create_stream(config).await;
    Ok(js.get_key_value(bucket).await?)
}

/// Delivers private frames published by other nodes to the user's connections on this one.
async fn relay_private(app: Arc<App>, mut messages: async_nats::Subscriber) {
    let cluster = app.cluster.as_ref().expect("a cluster").clone();
    let prefix = format!("{}.user.", cluster.namespace);
    loop {
        let message = tokio::select! {
            m = messages.next() => match m { Some(m) => m, None => return },
            _ = app.shutdown.cancelled() => return,
        };
        let headers = message.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        if header(HEADER_ORIGIN) == Some(cluster.node_id.as_str()) {
            continue; // delivered locally when it was sent
        }
        let Some(kind) = header(HEADER_KIND).and_then(OutKind::from_label) else {
            continue;
        };
        let Some(user) = message.subject.as_str().strip_prefix(&prefix) else {
            continue;
        };
        if let Ok(frame) = Frame::try_from(message.payload.clone()) {
            app.send_to_local_user(user, kind, &frame);
        }
    }
}

/// Renews the lease of every room this node owns, each third of the lease, with the room's
/// summary; each confirmed renewal extends the room's fence. A room whose lease cannot be
/// renewed within a lease, or was taken, is no longer this node's to sequence: it is abandoned
/// here (its members are sent to re-join, its queued events dropped) and forgotten.
async fn keep_leases(app: Arc<App>) {
    let cluster = app.cluster.as_ref().expect("a cluster").clone();
    let mut interval = tokio::time::interval(cluster.lease / 3);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        cluster
            .metrics
            .cluster_connected
            .set(i64::from(cluster.is_connected()));
        let ids: Vec<String> = cluster.owned.iter().map(|o| o.key().clone()).collect();
        // At once, so one room's unanswered write cannot hold back the others' renewals.
        futures_util::future::join_all(ids.into_iter().map(|id| renew(&app, &cluster, id))).await;
        takeover::take_over_orphans(&app).await;
    }
}

/// Renews one room's lease. A write whose answer was lost but which did land (the lease holds
/// this node's name at a newer revision) is adopted, not taken for another node's claim.
async fn renew(app: &Arc<App>, cluster: &Arc<Cluster>, id: String) {
    let Some(room) = app.rooms.get(&id) else {
        cluster.release(&id);
        return;
    };
    let Some((term, revision)) = cluster.owned.get(&id).map(|o| (o.term, o.revision)) else {
        return;
    };
    let lease = Lease {
        node: cluster.node_id.clone(),
        summary: room.summary(),
    };
    let sent = Instant::now();
    // A write unanswered for a whole lease could not have kept it.
    let update = cluster.leases.update(&id, lease.encode(), revision);
    let error = match tokio::time::timeout(cluster.lease, update).await {
        Ok(Ok(revision)) => {
            if let Some(mut owned) = cluster.owned.get_mut(&id) {
                owned.revision = revision;
                owned.renewed = sent;
            }
            room.hold(term, sent + cluster.sequencing_window());
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => kv::UpdateError::new(kv::UpdateErrorKind::TimedOut),
    };
    let mut taken = error.kind() == kv::UpdateErrorKind::WrongLastRevision;
    if taken {
        if let Ok(Some(entry)) = cluster.leases.entry(&id).await {
            let holder = serde_json::from_slice::<Lease>(&entry.value).map(|l| l.node);
            if entry.operation == kv::Operation::Put && holder.ok() == Some(cluster.node_id.clone())
            {
                // Ours: an earlier renewal landed after its caller stopped waiting. The next
                // beat renews from it; until then the fence stands where it was.
                if let Some(mut owned) = cluster.owned.get_mut(&id) {
                    owned.revision = entry.revision;
                }
                taken = false;
            }
        }
    }
    let lapsed = cluster
        .owned
        .get(&id)
        .is_none_or(|o| o.renewed.elapsed() >= cluster.lease);
    tracing::warn!(room = %id, %error, lapsed, taken, "could not renew a room's lease");
    if lapsed || taken {
        cluster.metrics.cluster_leases_lost.inc();
        room.abandon();
        app.forget_room(&room);
    }
}
