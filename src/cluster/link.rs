//! The NATS side of a room's link: the sequencer's events, and every other message this node
//! sends on NATS, leave through one bounded, ordered queue.
//!
//! A room numbers its events under its lock and must never wait there, while a NATS publish is
//! asynchronous. So [`NatsLink::publish`] only queues the event (with its position in headers,
//! so relays check order without parsing the JSON), and one task per node publishes the queue
//! in order. The queue holds `cluster.publish_queue_events`; a room refuses new commands with
//! `room_busy` once it is three quarters full, before any money moves, so it overflows only if
//! events already admitted outrun NATS. An event that finds it full is dropped and counted, and
//! every replica sees the gap at the next event and sends its members to re-join and recover
//! the missed events from the owner's history (close 4002 `resync`).
//!
//! The link also fences the room's sequencer. The lease keeper (`cluster.rs`) tells it how long
//! this node's lease is certain: a quarter of `cluster.lease_ms` short of the lease's expiry
//! counted from when its last confirmed write was *sent* (the server counts from when it wrote
//! it, which is later), so the room refuses new commands with `room_unavailable`, before any
//! money moves, well before another node can take the room over. When the lease is lost for
//! good the room is abandoned and the link revoked: its events still queued for NATS (say,
//! while this node was cut off from it) are dropped, so they never reach the stream after the
//! next owner has numbered its own. The one case the fence does not cover is a command admitted
//! inside the lease whose ledger commit outlasts the remaining quarter of it; its event is
//! numbered here and lost with this node's copy of the room, as every event is that did not
//! reach the stream before a takeover (`cluster/takeover.rs`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Cluster;
use crate::error::{Error, Result};
use crate::fanout::{Fanout, RoomLink};
use crate::protocol::EventFrame;

/// The room's epoch (16 hex digits) of an event.
pub const HEADER_EPOCH: &str = "Giftd-Epoch";
/// The event's `seq`.
pub const HEADER_SEQ: &str = "Giftd-Seq";
/// The lease under which the event was numbered: the revision at which its node claimed the
/// room. A later claim has a higher term, so relays and takeovers tell a new owner's events from
/// a former owner's late ones.
pub const HEADER_TERM: &str = "Giftd-Term";
/// On a room's last event (`room_closed`): the room ends with it.
pub const HEADER_LAST: &str = "Giftd-Last";
/// The node a private message comes from.
pub const HEADER_ORIGIN: &str = "Giftd-Origin";
/// A private message's kind (`thanks`, `answered`).
pub const HEADER_KIND: &str = "Giftd-Kind";

/// How often a publisher waiting for NATS to come back looks again.
const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// One message waiting for NATS.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// When a room event was numbered, for the publish latency.
    pub numbered_at: Option<Instant>,
    /// A room event's hold on its room: the event is dropped if the hold was revoked meanwhile.
    pub hold: Option<Arc<Hold>>,
}

/// A node's hold on sequencing one room, shared by the room's link and its queued events.
pub struct Hold {
    /// The hold's clock starts here.
    base: Instant,
    /// Until when (ns after `base`) the room may take commands; 0 until the lease is claimed.
    until_ns: AtomicU64,
    /// The claim's revision of the lease ([`HEADER_TERM`]).
    term: AtomicU64,
    revoked: AtomicBool,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
            term: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
        }
    }

    fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    fn is_certain(&self) -> bool {
        let now_ns = self.base.elapsed().as_nanos();
        !self.is_revoked() && now_ns < u128::from(self.until_ns.load(Ordering::Acquire))
    }
}

struct NatsLink {
    cluster: Arc<Cluster>,
    subject: String,
    hold: Arc<Hold>,
}

impl Fanout for Arc<Cluster> {
    fn link(&self, room: &str) -> Box<dyn RoomLink> {
        Box::new(NatsLink {
            cluster: self.clone(),
            subject: self.events_subject(room),
            hold: Arc::new(Hold::new()),
        })
    }
}

impl RoomLink for NatsLink {
    fn publish(&self, event: &EventFrame, last: bool) {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER_EPOCH,
            crate::protocol::epoch_hex(event.epoch).as_str(),
        );
        headers.insert(HEADER_SEQ, event.seq.to_string().as_str());
        let term = self.hold.term.load(Ordering::Acquire);
        headers.insert(HEADER_TERM, term.to_string().as_str());
        if last {
            headers.insert(HEADER_LAST, "1");
        }
        self.cluster.queue(Outgoing {
            subject: self.subject.clone(),
            headers,
            // Shares the encoded bytes: no copy per publication.
            payload: Bytes::from(event.bytes.clone()),
            numbered_at: Some(Instant::now()),
            hold: Some(self.hold.clone()),
        });
    }

    fn admit(&self) -> Result<()> {
        if !self.hold.is_certain() {
            self.cluster.metrics.cluster_commands_fenced.inc();
            return Err(Error::RoomUnavailable(
                "this node's lease on the room is not confirmed".into(),
            ));
        }
        if !self.cluster.has_room() {
            return Err(Error::RoomBusy);
        }
        Ok(())
    }

    fn hold(&self, term: u64, until: Instant) {
        self.hold.term.store(term, Ordering::Release);
        let until_ns = until.saturating_duration_since(self.hold.base).as_nanos();
        // Only ever extended: an older confirmation arriving late must not shorten the hold.
        self.hold.until_ns.fetch_max(
            u64::try_from(until_ns).unwrap_or(u64::MAX),
            Ordering::AcqRel,
        );
    }

    fn revoke(&self) {
        self.hold.revoked.store(true, Ordering::Release);
    }
}

/// Publishes the node's queue to NATS, in order. The client reconnects by itself; while NATS is
/// away this waits, the queue fills and rooms refuse commands with `room_busy`. Room events wait
/// here rather than in the client's own buffer, so an event of a room this node lost meanwhile
/// is still dropped when NATS returns.
pub(super) async fn publish_outgoing(cluster: Arc<Cluster>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(message) = rx.recv().await {
        cluster.metrics.cluster_publish_queue_events.dec();
        if message.hold.is_some() {
            while !cluster.is_connected() {
                tokio::time::sleep(RECONNECT_POLL).await;
            }
        }
        if message.hold.as_ref().is_some_and(|h| h.is_revoked()) {
            cluster.metrics.cluster_publish_revoked.inc();
            continue;
        }
        let published = cluster
            .client
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, "could not publish to NATS");
            cluster.metrics.cluster_publish_dropped.inc();
        }
        if let Some(at) = message.numbered_at {
            cluster
                .metrics
                .cluster_publish_seconds
                .observe(at.elapsed().as_secs_f64());
        }
    }
}
