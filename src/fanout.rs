//! Fan-out beyond this node: the link from a room's sequencer to the room's other nodes.
//!
//! A room numbers and encodes each event once, under its lock, delivers it to its members on
//! this node through its hub (`room/hub.rs`), then hands it to its [`RoomLink`]. On a single
//! node the link does nothing ([`LocalFanout`]): the hub is the whole fan-out. In a cluster
//! (`cluster/link.rs`) the link queues the event, bounded and in order, for publication on the
//! room's NATS subject, from which every other node's replica relays it to its own members.
//! A single node is therefore a cluster of one, not a second code path.

use tokio::time::Instant;

use crate::error::Result;
use crate::protocol::EventFrame;

/// Makes the link of each room this node sequences.
pub trait Fanout: Send + Sync + 'static {
    /// The link for a room this node now sequences.
    fn link(&self, room: &str) -> Box<dyn RoomLink>;
}

/// Where a room's events go beyond this node.
pub trait RoomLink: Send + Sync {
    /// Sends one event on to the other nodes; `last` marks the room's final event. Called under
    /// the room's lock, in `seq` order, so it must not block.
    fn publish(&self, event: &EventFrame, last: bool);

    /// Whether the room may take a new command now, checked before any money moves. A link
    /// refuses with `room_busy` while it cannot take another event (rather than let the room's
    /// other nodes fall behind), and with `room_unavailable` while this node's right to
    /// sequence the room is not certain (`cluster/link.rs`).
    fn admit(&self) -> Result<()>;

    /// This node sequences the room under the lease it claimed as `term`, and may take
    /// commands until `until` (when that lease was last confirmed, less a margin).
    fn hold(&self, term: u64, until: Instant);

    /// This node no longer sequences the room: events not yet sent on are dropped.
    fn revoke(&self);
}

/// Fan-out within this process only.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalFanout;

struct LocalLink;

impl Fanout for LocalFanout {
    fn link(&self, _room: &str) -> Box<dyn RoomLink> {
        Box::new(LocalLink)
    }
}

impl RoomLink for LocalLink {
    fn publish(&self, _event: &EventFrame, _last: bool) {}

    /// A single node always holds its rooms and has no queue beyond its hub.
    fn admit(&self) -> Result<()> {
        Ok(())
    }

    fn hold(&self, _term: u64, _until: Instant) {}

    fn revoke(&self) {}
}
