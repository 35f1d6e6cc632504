//! A room's members on this node and the ring their writers read.
//!
//! Every node that has members in a room keeps one hub for it: the owner node inside its
//! [`Room`](super::Room), which numbers events and pushes them into the ring itself, and every
//! other node as a [`Replica`](super::replica::Replica), whose relay pushes the events it
//! receives over NATS. Either way each event is one [`EventFrame`] whose bytes every member's
//! writer shares, and a writer that falls a whole ring behind is a slow consumer.
//!
//! The member map is behind a plain mutex held for short, synchronous sections only.
//!
//! **Waking writers.** A writer takes the ring's events with `try_recv` and waits for the next
//! one with its waker in its connection's outbox, which [`Hub::deliver`] wakes for every member
//! after each event, rather than with a receive future of the ring's own: that future would be
//! 80 bytes in every connection's writer task, joined or not. A writer registers its waker before
//! it looks at the ring, so an event delivered after the look wakes it.
//!
//! **Backlog.** The hub counts how far behind its members' writers are, without a lock or a
//! per-member entry: every event delivered owes one take per member subscribed at that moment,
//! and every writer counts the events it takes from the ring (sent, or given up on when it ends
//! or lags). The difference over the member count is the members' mean backlog: when the node
//! itself cannot keep up with the room, every writer falls behind and the mean grows, while one
//! client that stopped reading moves it by its own backlog divided by the members. The room
//! sheds load on the mean (`Room::admit`), so members reading at full speed are never dropped as
//! slow because the node is slower than the room's publishers.
//!
//! **Slow node or slow client.** The mean misses a node that is behind for only some of its
//! members (their writers get less of the CPU than others), and the backlog alone cannot say
//! whether a writer is behind because its client does not read or because it was not scheduled.
//! Its socket can: a writer whose socket took its last write at once, and which still finds itself
//! `behind_events` behind the room, is behind because the node is. It says so
//! ([`Subscription::node_is_behind`]) and the room refuses commands for [`NODE_BEHIND_HOLD`]
//! after the last such report, before any member falls a whole ring behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::auth::Role;
use crate::bounds::NODE_BEHIND_HOLD;
use crate::error::{CloseCode, Error, Result};
use crate::outbox::{Outbound, Outbox};
use crate::protocol::EventFrame;

use super::ConnId;

const NODE_BEHIND_HOLD_MS: u64 = NODE_BEHIND_HOLD.as_millis() as u64;

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

/// What a hub's members' writers report to it.
struct Reports {
    /// Events its members' writers took from the ring.
    taken: AtomicI64,
    /// When a writer last reported the node behind, as [`Reports::now_ms`] (0: never).
    node_behind_ms: AtomicU64,
    born: Instant,
    /// A writer this many events behind with a socket that took its last write at once reports
    /// the node behind.
    behind_events: u64,
}

impl Reports {
    /// Milliseconds since the hub was made, plus 1, so that 0 keeps meaning "never".
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64 + 1
    }
}

/// A member's view of a room's ring: every event after `through_seq`, in order. Whatever the
/// ring holds at or before `through_seq` the member already has (from its snapshot or its
/// replay), and its writer skips it.
pub struct Subscription {
    pub ring: broadcast::Receiver<EventFrame>,
    pub through_seq: u64,
    reports: Arc<Reports>,
}

impl Subscription {
    /// Counts `events` this member's writer took from the ring: sent, skipped as already seen,
    /// or lost to lag.
    pub fn took(&self, events: u64) {
        self.reports
            .taken
            .fetch_add(i64::try_from(events).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// How far behind the room a writer may be, while its socket takes everything at once,
    /// before the node counts as behind.
    pub fn behind_events(&self) -> u64 {
        self.reports.behind_events
    }

    /// This member's writer is `behind_events` behind although its socket is not what holds it
    /// back: the node is slower than the room, and the room sheds load (see the module doc).
    pub fn node_is_behind(&self) {
        let now = self.reports.now_ms();
        self.reports.node_behind_ms.store(now, Ordering::Relaxed);
    }
}

impl Drop for Hub {
    /// A member still subscribed reads the ring's end (`Closed`) once woken, and lets go of it.
    fn drop(&mut self) {
        self.wake_members();
    }
}

impl Drop for Subscription {
    /// What the member never took, it never will: it no longer counts as backlog.
    fn drop(&mut self) {
        self.took(self.ring.len() as u64);
    }
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
    /// Takes owed: each delivered event times the members subscribed when it was delivered.
    owed: AtomicI64,
    reports: Arc<Reports>,
    members: Mutex<Members>,
    closed: AtomicBool,
    members_max: usize,
}

impl Hub {
    /// A hub whose ring holds `ring_frames` events per member and which admits at most
    /// `members_max` members; a writer `behind_events` behind reports the node behind unless its
    /// socket is what holds it back.
    pub fn new(ring_frames: usize, members_max: usize, behind_events: usize) -> Hub {
        assert!(ring_frames >= 1);
        let (ring, _) = broadcast::channel(ring_frames);
        Hub {
            ring,
            owed: AtomicI64::new(0),
            reports: Arc::new(Reports {
                taken: AtomicI64::new(0),
                node_behind_ms: AtomicU64::new(0),
                born: Instant::now(),
                behind_events: behind_events as u64,
            }),
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
        if let Ok(members) = self.ring.send(event) {
            self.owed.fetch_add(
                i64::try_from(members).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
            self.wake_members();
        }
    }

    /// Wakes every member's writer to take what the ring holds for it (see the module doc). A
    /// writer that is already awake, or has not been polled since its last wake-up, costs an
    /// atomic swap.
    fn wake_members(&self) {
        for member in self.members().by_conn.values() {
            member.outbox.wake_writer();
        }
    }

    /// How many events the members' writers are behind, on average (see the module doc).
    pub fn backlog_mean_events(&self) -> u64 {
        let members = self.ring.receiver_count() as u64;
        if members == 0 {
            return 0;
        }
        let taken = self.reports.taken.load(Ordering::Relaxed);
        let behind = self.owed.load(Ordering::Relaxed) - taken;
        u64::try_from(behind).unwrap_or(0) / members
    }

    /// Whether a member's writer reported the node behind within the last [`NODE_BEHIND_HOLD`].
    pub fn node_behind(&self) -> bool {
        let at = self.reports.node_behind_ms.load(Ordering::Relaxed);
        at > 0 && self.reports.now_ms().saturating_sub(at) < NODE_BEHIND_HOLD_MS
    }

    /// Adds a member and subscribes it to every event delivered after this call.
    pub fn join(
        &self,
        conn: ConnId,
        role: Role,
        user: &str,
        outbox: Outbox,
    ) -> Result<Subscription> {
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
        Ok(Subscription {
            ring: self.ring.subscribe(),
            through_seq: 0,
            reports: self.reports.clone(),
        })
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

    /// Closes the hub if it has no members, in one step with that check, so no member can join
    /// in between and be left in a closed hub. Returns whether it closed.
    pub fn close_if_empty(&self) -> bool {
        let members = self.members();
        if !members.by_conn.is_empty() {
            return false;
        }
        self.closed.store(true, Ordering::Release);
        true
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
    use std::task::Poll;
    use std::time::Duration;

    fn event(seq: u64) -> EventFrame {
        EventFrame {
            epoch: 1,
            seq,
            bytes: Frame::from(format!("e{seq}")),
        }
    }

    #[test]
    fn the_backlog_is_what_members_have_not_taken_and_leaves_with_them() {
        let hub = Hub::new(4, 10, 3);
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let mut fast = hub.join(1, Role::Viewer, "amy", outbox.clone()).unwrap();
        let slow = hub.join(2, Role::Viewer, "bob", outbox).unwrap();
        for seq in 1..=3 {
            hub.deliver(event(seq));
        }
        assert_eq!(hub.backlog_mean_events(), 3, "each member owes 3");
        while fast.ring.try_recv().is_ok() {
            fast.took(1);
        }
        assert_eq!(hub.backlog_mean_events(), 1, "3 owed over 2 members");
        drop(slow);
        assert_eq!(
            hub.backlog_mean_events(),
            0,
            "a member's backlog leaves with it"
        );
        // Six more into a ring of four: the member lags by two, which are never taken.
        for seq in 4..=9 {
            hub.deliver(event(seq));
        }
        assert_eq!(hub.backlog_mean_events(), 6);
        match fast.ring.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(lost)) => fast.took(lost),
            other => panic!("expected a lag, got {other:?}"),
        }
        while fast.ring.try_recv().is_ok() {
            fast.took(1);
        }
        assert_eq!(hub.backlog_mean_events(), 0);
    }

    #[test]
    fn only_an_empty_hub_closes_if_empty_and_then_no_one_joins() {
        let hub = Hub::new(2, 10, 1);
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let _ring = hub.join(1, Role::Viewer, "bob", outbox.clone()).unwrap();
        assert!(!hub.close_if_empty());
        hub.leave(1);
        assert!(hub.close_if_empty());
        assert!(matches!(
            hub.join(2, Role::Viewer, "amy", outbox),
            Err(Error::NotInRoom)
        ));
    }

    #[test]
    fn members_see_later_events_and_lag_is_reported() {
        let hub = Hub::new(2, 10, 1);
        hub.deliver(event(1));
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let mut ring = hub.join(1, Role::Viewer, "bob", outbox).unwrap();
        for seq in 2..=4 {
            hub.deliver(event(seq));
        }
        assert!(matches!(
            ring.ring.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
        assert_eq!(ring.ring.try_recv().unwrap().seq, 3);
    }

    /// A writer waits for the ring with its waker in its outbox (`connection.rs`): each delivery
    /// wakes it, and so does the hub's end, after which its ring reads as closed.
    #[tokio::test]
    async fn a_delivery_wakes_each_member_s_writer_and_so_does_the_hub_s_end() {
        use broadcast::error::TryRecvError;
        let hub = Hub::new(8, 10, 4);
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        let mut subscription = hub.join(1, Role::Viewer, "bob", outbox).unwrap();
        let writer = tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                // As the writer does: register through the outbox, then look at the ring.
                let next = std::future::poll_fn(|cx| {
                    assert!(rx.poll_recv(cx).is_pending(), "nothing is pushed or kicked");
                    match subscription.ring.try_recv() {
                        Err(TryRecvError::Empty) => Poll::Pending,
                        other => Poll::Ready(other),
                    }
                })
                .await;
                match next {
                    Ok(event) => seqs.push(event.seq),
                    Err(TryRecvError::Closed) => return seqs,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        for seq in 1..=2 {
            hub.deliver(event(seq));
            // The writer takes the event and waits again.
            tokio::task::yield_now().await;
        }
        assert!(!writer.is_finished());
        drop(hub);
        let seqs = tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer was woken")
            .unwrap();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn a_user_on_two_devices_is_one_user() {
        let hub = Hub::new(4, 10, 3);
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
        let hub = Hub::new(4, 2, 3);
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
