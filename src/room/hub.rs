//! A room's members on this node and the ring their writers read.
//!
//! Every node that has members in a room keeps one hub for it: the owner node inside its
//! [`Room`](super::Room), which numbers events and pushes them into the ring itself, and every
//! other node as a [`Replica`](super::replica::Replica), whose relay pushes the events it
//! receives over NATS. Either way each event is one [`EventFrame`] whose bytes every member's
//! writer shares, and a writer that falls a whole ring behind is a slow consumer.
//!
//! The member map is behind a plain mutex held for short, synchronous sections only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::auth::Role;
use crate::error::{CloseCode, Error, Result};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::EventFrame;

use super::ConnId;

struct Member {
    role: Role,
    user: String,
    outbox: Outbox,
}

#[derive(Default)]
struct Members {
    by_conn: HashMap<ConnId, Member>,
    viewers: u64,
    streamers: u64,
    /// Viewer connections per user, so a user on two devices counts once in `users`.
    viewer_conns_by_user: HashMap<String, u32>,
}

/// A member's view of a room's ring: every event after `through_seq`, in order. Whatever the
/// ring holds at or before `through_seq` the member already has (from its snapshot or its
/// replay), and its writer skips it.
pub struct Subscription {
    pub ring: broadcast::Receiver<EventFrame>,
    pub through_seq: u64,
}

/// A hub's members: viewer connections, the streamer's connections, and distinct viewer users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub viewers: u64,
    pub streamers: u64,
    pub users: u64,
}

pub struct Hub {
    ring: broadcast::Sender<EventFrame>,
    members: Mutex<Members>,
    closed: AtomicBool,
    members_max: usize,
}

impl Hub {
    /// A hub whose ring holds `ring_frames` events per member and which admits at most
    /// `members_max` members.
    pub fn new(ring_frames: usize, members_max: usize) -> Hub {
        assert!(ring_frames >= 1);
        let (ring, _) = broadcast::channel(ring_frames);
        Hub {
            ring,
            members: Mutex::new(Members::default()),
            closed: AtomicBool::new(false),
            members_max,
        }
    }

    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Delivers one event to every member's writer. Never blocks: a member too far behind finds
    /// out when it next reads.
    pub fn deliver(&self, event: EventFrame) {
        // No members is fine: an empty room still numbers its events.
        let _ = self.ring.send(event);
    }

    /// Adds a member and subscribes it to every event delivered after this call.
    pub fn join(
        &self,
        conn: ConnId,
        role: Role,
        user: &str,
        outbox: Outbox,
    ) -> Result<broadcast::Receiver<EventFrame>> {
        let mut members = self.members();
        if self.is_closed() {
            return Err(Error::NotInRoom);
        }
        if members.by_conn.len() >= self.members_max {
            return Err(Error::RoomFull);
        }
        match role {
            Role::Viewer => {
                members.viewers += 1;
                *members
                    .viewer_conns_by_user
                    .entry(user.to_owned())
                    .or_default() += 1;
            }
            Role::Streamer => members.streamers += 1,
        }
        let user = user.to_owned();
        members.by_conn.insert(conn, Member { role, user, outbox });
        Ok(self.ring.subscribe())
    }

    /// Removes a member; returns its role if it was one.
    pub fn leave(&self, conn: ConnId) -> Option<Role> {
        let mut members = self.members();
        let member = members.by_conn.remove(&conn)?;
        match member.role {
            Role::Viewer => {
                members.viewers -= 1;
                if let Some(n) = members.viewer_conns_by_user.get_mut(&member.user) {
                    *n -= 1;
                    if *n == 0 {
                        members.viewer_conns_by_user.remove(&member.user);
                    }
                }
            }
            Role::Streamer => members.streamers -= 1,
        }
        Some(member.role)
    }

    pub fn counts(&self) -> Counts {
        let members = self.members();
        Counts {
            viewers: members.viewers,
            streamers: members.streamers,
            users: members.viewer_conns_by_user.len() as u64,
        }
    }

    /// Marks the hub closed (no member joins after this) and takes its members out.
    fn close_and_take(&self) -> Members {
        let mut members = self.members();
        self.closed.store(true, Ordering::Release);
        std::mem::take(&mut *members)
    }

    /// Ends the hub without a last event: every member's connection is closed with `code`.
    /// Returns how many members there were.
    pub fn kick_all(&self, code: CloseCode) -> usize {
        let members = self.close_and_take();
        let n = members.by_conn.len();
        for member in members.by_conn.into_values() {
            member.outbox.kick(code);
        }
        n
    }

    /// Ends the hub after its last event (such as `room_closed`) was delivered: every member's
    /// writer forwards what the ring holds for it, then stops.
    pub fn close(&self) {
        for member in self.close_and_take().by_conn.into_values() {
            member.outbox.send(Outbound::Unsubscribe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;

    fn event(seq: u64) -> EventFrame {
        EventFrame {
            epoch: 1,
            seq,
            bytes: Frame::from(format!("e{seq}")),
        }
    }

    #[test]
    fn members_see_later_events_and_lag_is_reported() {
        let hub = Hub::new(2, 10);
        hub.deliver(event(1));
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let mut ring = hub.join(1, Role::Viewer, "bob", outbox).unwrap();
        for seq in 2..=4 {
            hub.deliver(event(seq));
        }
        assert!(matches!(
            ring.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
        assert_eq!(ring.try_recv().unwrap().seq, 3);
    }

    #[test]
    fn a_user_on_two_devices_is_one_user() {
        let hub = Hub::new(4, 10);
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        hub.join(1, Role::Viewer, "bob", outbox.clone()).unwrap();
        hub.join(2, Role::Viewer, "bob", outbox.clone()).unwrap();
        hub.join(3, Role::Viewer, "amy", outbox).unwrap();
        assert_eq!((hub.counts().viewers, hub.counts().users), (3, 2));
        hub.leave(1);
        assert_eq!((hub.counts().viewers, hub.counts().users), (2, 2));
        hub.leave(2);
        assert_eq!((hub.counts().viewers, hub.counts().users), (1, 1));
    }

    #[test]
    fn counts_follow_joins_and_leaves_and_a_closed_hub_refuses_members() {
        let hub = Hub::new(4, 2);
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        hub.join(1, Role::Viewer, "bob", outbox.clone()).unwrap();
        hub.join(2, Role::Streamer, "star", outbox.clone()).unwrap();
        assert_eq!(
            hub.join(3, Role::Viewer, "amy", outbox.clone()).err(),
            Some(Error::RoomFull)
        );
        assert_eq!(
            hub.counts(),
            Counts {
                viewers: 1,
                streamers: 1,
                users: 1,
            }
        );
        assert_eq!(hub.leave(2), Some(Role::Streamer));
        assert_eq!(hub.leave(2), None);
        hub.close();
        assert!(matches!(rx.try_recv(), Some(Outbound::Unsubscribe)));
        assert!(hub.join(4, Role::Viewer, "bob", outbox).is_err());
        assert_eq!(hub.counts(), Counts::default());
    }
}
