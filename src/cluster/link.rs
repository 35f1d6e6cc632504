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

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Cluster;
use crate::fanout::{Fanout, RoomLink};
use crate::protocol::EventFrame;

/// The room's epoch (16 hex digits) of an event.
pub const HEADER_EPOCH: &str = "Giftd-Epoch";
/// The event's `seq`.
pub const HEADER_SEQ: &str = "Giftd-Seq";
/// On a room's last event (`room_closed`): the room ends with it.
pub const HEADER_LAST: &str = "Giftd-Last";
/// The node a private message comes from.
pub const HEADER_ORIGIN: &str = "Giftd-Origin";
/// A private message's kind (`thanks`, `answered`).
pub const HEADER_KIND: &str = "Giftd-Kind";

/// One message waiting for NATS.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// When a room event was numbered, for the publish latency.
    pub numbered_at: Option<Instant>,
}

struct NatsLink {
    cluster: Arc<Cluster>,
    subject: String,
}

impl Fanout for Arc<Cluster> {
    fn link(&self, room: &str) -> Box<dyn RoomLink> {
        Box::new(NatsLink {
            cluster: self.clone(),
            subject: self.events_subject(room),
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
        if last {
            headers.insert(HEADER_LAST, "1");
        }
        self.cluster.queue(Outgoing {
            subject: self.subject.clone(),
            headers,
            // Shares the encoded bytes: no copy per publication.
            payload: Bytes::from(event.bytes.clone()),
            numbered_at: Some(Instant::now()),
        });
    }

    fn has_room(&self) -> bool {
        self.cluster.has_room()
    }
}

/// Publishes the node's queue to NATS, in order. The client buffers and reconnects by itself;
/// while NATS is away this waits, the queue fills and rooms refuse commands with `room_busy`.
pub(super) async fn publish_outgoing(cluster: Arc<Cluster>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(message) = rx.recv().await {
        cluster.metrics.cluster_publish_queue_events.dec();
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
