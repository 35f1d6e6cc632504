//! A room that another node runs, as this node serves it to its own members.
//!
//! The replica is a hub (`hub.rs`) fed by a relay: the task that reads the room's NATS subject
//! and delivers each event, already encoded by the owner, to the hub's ring. The relay checks
//! each event's position from its headers without parsing the JSON: an event of another epoch
//! (another incarnation of the room) or one it already delivered is skipped, and a gap means this
//! node lost events on their way from the owner (NATS dropped them, or this node was
//! disconnected). Then the replica cannot vouch for its members' streams any more: it sends each
//! of them away with close 4002 `resync`, after which they re-join with their last position and
//! recover the missed events from the owner's history, and the replica ends. It also ends with
//! the room's last event (`room_closed`), or when it has no members left.
//!
//! Each event also carries its owner's term (`cluster/link.rs`). An event of an older term than
//! the relay has seen comes from a node that lost the room and is skipped. A new term whose
//! first event does not follow what the relay delivered means the relay delivered events the
//! new owner never had (a former owner's, numbered just before it lost the room): members
//! re-join, as after a gap, and get the new owner's history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::task::AbortHandle;

use super::hub::{Counts, Hub};
use super::{ConnId, RoomSummary};
use crate::auth::Role;
use crate::cluster::link::{HEADER_EPOCH, HEADER_LAST, HEADER_SEQ, HEADER_TERM};
use crate::cluster::Cluster;
use crate::config::RoomsConfig;
use crate::error::{CloseCode, Error, Result};
use crate::outbox::Outbox;
use crate::protocol::{EventFrame, Frame};

use super::hub::Subscription;

pub struct Replica {
    pub id: String,
    pub streamer: String,
    pub epoch_id: u64,
    /// The room as its owner's lease described it when this replica began.
    pub summary: RoomSummary,
    hub: Arc<Hub>,
    /// The last event the relay delivered; 0 before the first.
    last_seq: AtomicU64,
    relay: Mutex<Option<AbortHandle>>,
}

impl Replica {
    /// A replica of the room its lease describes.
    pub fn new(summary: &RoomSummary, config: &RoomsConfig) -> Result<Replica> {
        let epoch_id = u64::from_str_radix(&summary.epoch, 16)
            .map_err(|_| Error::Internal(format!("bad epoch in the lease of {}", summary.room)))?;
        Ok(Replica {
            id: summary.room.clone(),
            streamer: summary.streamer.clone(),
            epoch_id,
            summary: summary.clone(),
            hub: Arc::new(Hub::new(
                config.room_ring_frames,
                config.members_max,
                config.busy_backlog_events,
            )),
            last_seq: AtomicU64::new(0),
            relay: Mutex::new(None),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.hub.is_closed()
    }

    pub(crate) fn set_relay(&self, relay: AbortHandle) {
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(relay);
    }

    /// Stops relaying because this node now runs the room (a takeover), and hands over the hub,
    /// whose members stay subscribed. Returns the last event the relay delivered.
    pub(crate) fn hand_over(&self) -> (Arc<Hub>, u64) {
        if let Some(relay) = self.relay.lock().unwrap_or_else(|p| p.into_inner()).take() {
            relay.abort();
        }
        (self.hub.clone(), self.last_seq.load(Ordering::Acquire))
    }

    /// Ends the replica if it has no members (checked and closed in one step, so a member joining
    /// meanwhile either is counted or finds it closed); its relay stops. Returns whether it ended.
    pub(crate) fn stop_if_empty(&self) -> bool {
        if !self.hub.close_if_empty() {
            return false;
        }
        if let Some(relay) = self.relay.lock().unwrap_or_else(|p| p.into_inner()).take() {
            relay.abort();
        }
        true
    }

    /// Ends the replica: its relay stops and its members' subscriptions end.
    pub(crate) fn stop(&self) {
        if let Some(relay) = self.relay.lock().unwrap_or_else(|p| p.into_inner()).take() {
            relay.abort();
        }
        self.hub.close();
    }

    /// Adds a member, subscribed to every event the relay delivers from now on. Its writer skips
    /// what its entry covers (set with [`Subscription::through_seq`] once the owner answered).
    pub fn join(
        &self,
        conn: ConnId,
        role: Role,
        user: &str,
        outbox: Outbox,
    ) -> Result<Subscription> {
        self.hub
            .join(conn, role, user, outbox)
            .map_err(|e| match e {
                Error::NotInRoom => Error::RoomNotFound(self.id.clone()),
                other => other,
            })
    }

    pub fn leave(&self, conn: ConnId) {
        self.hub.leave(conn);
    }

    pub fn counts(&self) -> Counts {
        self.hub.counts()
    }

    /// Relays the room's events from NATS to the hub until the room ends or the relay finds a
    /// gap.
    pub(crate) async fn relay(self: Arc<Self>, mut events: Subscriber, cluster: Arc<Cluster>) {
        let mut current_term = 0;
        while let Some(message) = events.next().await {
            let headers = message.headers.as_ref();
            let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
            let epoch = header(HEADER_EPOCH).and_then(|e| u64::from_str_radix(e, 16).ok());
            let seq = header(HEADER_SEQ).and_then(|s| s.parse::<u64>().ok());
            let (Some(epoch), Some(seq)) = (epoch, seq) else {
                continue;
            };
            if epoch != self.epoch_id {
                continue; // another incarnation of the room
            }
            let term = header(HEADER_TERM)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
            if term < current_term {
                continue; // a former owner's, numbered after it lost the room
            }
            let last = self.last_seq.load(Ordering::Acquire);
            if term > current_term && current_term != 0 && last != 0 && seq <= last {
                tracing::warn!(room = %self.id, last, seq, term, "a new owner does not continue what was relayed; members re-join");
                self.resync(&cluster);
                return;
            }
            current_term = term;
            if last != 0 && seq <= last {
                continue; // delivered already
            }
            if last != 0 && seq != last + 1 {
                tracing::warn!(room = %self.id, last, seq, "events were lost on their way here; members re-join");
                self.resync(&cluster);
                return;
            }
            let Ok(bytes) = Frame::try_from(message.payload.clone()) else {
                continue;
            };
            self.last_seq.store(seq, Ordering::Release);
            self.hub.deliver(EventFrame { epoch, seq, bytes });
            if header(HEADER_LAST).is_some() {
                self.hub.close();
                cluster.drop_replica(&self);
                return;
            }
        }
    }

    /// Sends every member away to re-join and recover, and ends the replica.
    fn resync(self: &Arc<Self>, cluster: &Cluster) {
        let kicked = self.hub.kick_all(CloseCode::Resync);
        cluster.metrics.cluster_resyncs.inc_by(kicked as u64);
        cluster.drop_replica(self);
    }
}
