//! A live room: its members, its event sequence and its ring of encoded events.
//!
//! Every room event is numbered and encoded once, under the room's lock, then pushed into the
//! room's event channel (`fanout.rs`; on one node, a bounded broadcast ring). Each member's
//! writer reads the ring at its own pace; a writer that falls more than `room_ring_frames` behind
//! is dropped as a slow consumer, and neither the room nor the other members ever wait for it. Publishing is O(1) under the lock: numbering, encoding
//! and one ring push. Because numbering and pushing happen under the same lock, every member sees
//! events in sequence order with no gaps.
//!
//! The lock is a plain mutex held for short, synchronous sections only (never across `.await`),
//! which keeps the registry lock-free in the common case and the room's state consistent.

pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::auth::Role;
use crate::config::RoomsConfig;
use crate::error::{Error, Result};
use crate::fanout::{Fanout, RoomChannel};
use crate::ledger::now_ms;
use crate::metrics::Metrics;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::server::{EventKind, PaidView, QuestionView, Snapshot};
use crate::protocol::{Event, Frame};
use crate::question::Questions;

/// Identifies one connection on this node.
pub type ConnId = u64;

struct Member {
    role: Role,
    outbox: Outbox,
}

struct State {
    seq: u64,
    members: HashMap<ConnId, Member>,
    viewers: u64,
    viewers_published: u64,
    /// The streamer's connections in the room, and since when there have been none.
    streamer_conns: u64,
    /// Monotonic, so a wall-clock jump cannot close a room early or keep it open.
    streamer_away_since: Option<Instant>,
    questions: Questions,
    /// Recent gift id -> sender, so the streamer can thank them; oldest dropped first.
    recent_gifts: HashMap<String, String>,
    recent_order: VecDeque<String>,
}

pub struct Room {
    pub id: String,
    pub streamer: String,
    pub title: String,
    pub opened_ms: u64,
    events: Box<dyn RoomChannel>,
    state: Mutex<State>,
    closed: AtomicBool,
    members_max: usize,
    recent_gifts_max: usize,
    metrics: Arc<Metrics>,
}

/// A room as `GET /rooms` lists it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: String,
    pub title: String,
    pub streamer: String,
    pub viewers: u64,
    pub seq: u64,
    pub opened_ms: u64,
}

impl Room {
    pub fn new(
        id: &str,
        streamer: &str,
        title: &str,
        config: &RoomsConfig,
        metrics: Arc<Metrics>,
        fanout: &dyn Fanout,
    ) -> Room {
        Room {
            id: id.to_owned(),
            streamer: streamer.to_owned(),
            title: title.to_owned(),
            opened_ms: now_ms(),
            events: fanout.channel(id, config.room_ring_frames),
            state: Mutex::new(State {
                seq: 0,
                members: HashMap::new(),
                viewers: 0,
                viewers_published: 0,
                streamer_conns: 0,
                streamer_away_since: Some(Instant::now()),
                questions: Questions::new(config.questions_open_max),
                recent_gifts: HashMap::new(),
                recent_order: VecDeque::new(),
            }),
            closed: AtomicBool::new(false),
            members_max: config.members_max,
            recent_gifts_max: config.recent_gifts_max,
            metrics,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Locks the state of a live room. The guard is never held across `.await`.
    fn live(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_closed() {
            return Err(Error::RoomNotFound(self.id.clone()));
        }
        Ok(state)
    }

    /// Numbers, encodes and pushes one event. Must be called with the lock held.
    fn publish(&self, state: &mut State, kind: &EventKind) -> u64 {
        state.seq += 1;
        self.events.send(Event::encode(&self.id, state.seq, kind));
        self.metrics.room_event(kind);
        state.seq
    }

    fn snapshot(&self, state: &mut State) -> Snapshot {
        let (questions_open, questions_pinned) = state.questions.snapshot(now_ms());
        Snapshot {
            room: self.id.clone(),
            title: self.title.clone(),
            streamer: self.streamer.clone(),
            viewers: state.viewers,
            seq: state.seq,
            questions_open,
            questions_pinned,
        }
    }

    /// Adds a member. The snapshot and the ring subscription are taken under one lock, so the
    /// member's first event is exactly `snapshot.seq + 1`.
    pub fn join(
        &self,
        conn: ConnId,
        role: Role,
        outbox: Outbox,
    ) -> Result<(Snapshot, broadcast::Receiver<Frame>)> {
        let mut state = self.live()?;
        if state.members.len() >= self.members_max {
            return Err(Error::RoomFull);
        }
        match role {
            Role::Viewer => state.viewers += 1,
            Role::Streamer => {
                state.streamer_conns += 1;
                state.streamer_away_since = None;
            }
        }
        state.members.insert(conn, Member { role, outbox });
        let snapshot = self.snapshot(&mut state);
        Ok((snapshot, self.events.subscribe()))
    }

    pub fn leave(&self, conn: ConnId) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = state.members.remove(&conn) {
            match m.role {
                Role::Viewer => state.viewers -= 1,
                Role::Streamer => {
                    state.streamer_conns -= 1;
                    if state.streamer_conns == 0 {
                        state.streamer_away_since = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Whether the streamer has had no connection in the room for at least `away`.
    pub fn streamer_away_for(&self, away: Duration, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .streamer_away_since
            .is_some_and(|since| now.saturating_duration_since(since) >= away)
    }

    /// Closes the room: publishes `room_closed` and tells every member's writer to finish with
    /// the ring. Returns the final sequence number.
    pub fn close(&self, reason: &str) -> Result<u64> {
        let (seq, members) = {
            let mut state = self.live()?;
            self.closed.store(true, Ordering::Release);
            let seq = self.publish(
                &mut state,
                &EventKind::RoomClosed {
                    reason: reason.to_owned(),
                },
            );
            (seq, std::mem::take(&mut state.members))
        };
        for member in members.into_values() {
            member.outbox.send(Outbound::Unsubscribe);
        }
        Ok(seq)
    }

    /// Publishes a committed gift and remembers it for thanking.
    pub fn gift(
        &self,
        gift_id: &str,
        from: &str,
        sticker: &str,
        sticker_name: &str,
        price_coins: u64,
    ) -> Result<u64> {
        let mut state = self.live()?;
        let kind = EventKind::Gift {
            gift_id: gift_id.to_owned(),
            from: from.to_owned(),
            sticker: sticker.to_owned(),
            sticker_name: sticker_name.to_owned(),
            price_coins,
        };
        let seq = self.publish(&mut state, &kind);
        self.remember_gift(&mut state, gift_id, from);
        Ok(seq)
    }

    fn remember_gift(&self, state: &mut State, gift_id: &str, from: &str) {
        if state
            .recent_gifts
            .insert(gift_id.to_owned(), from.to_owned())
            .is_none()
        {
            state.recent_order.push_back(gift_id.to_owned());
        }
        while state.recent_order.len() > self.recent_gifts_max {
            if let Some(old) = state.recent_order.pop_front() {
                state.recent_gifts.remove(&old);
            }
        }
    }

    /// Publishes a question; `paid` and `pin_secs` for a question paid with a sticker.
    pub fn ask(
        &self,
        from: &str,
        text: &str,
        paid: Option<PaidView>,
        pin_secs: u64,
    ) -> Result<(QuestionView, u64)> {
        let mut state = self.live()?;
        if let Some(p) = &paid {
            self.remember_gift(&mut state, &p.gift_id, from);
        }
        let view = state.questions.ask(from, text, paid, pin_secs, now_ms());
        let seq = self.publish(&mut state, &EventKind::Question(view.clone()));
        Ok((view, seq))
    }

    /// Publishes an answer; returns the question answered and the event's sequence number.
    pub fn answer(&self, question_id: u64, text: &str) -> Result<(QuestionView, u64)> {
        let mut state = self.live()?;
        let question = state.questions.answer(question_id, now_ms())?;
        let kind = EventKind::Answer {
            question_id,
            asker: question.from.clone(),
            text: text.to_owned(),
        };
        let seq = self.publish(&mut state, &kind);
        Ok((question, seq))
    }

    /// Publishes a thank-you for a recent gift; returns its sender and the sequence number.
    pub fn thank(&self, gift_id: &str, text: &str) -> Result<(String, u64)> {
        let mut state = self.live()?;
        let sender = state
            .recent_gifts
            .get(gift_id)
            .cloned()
            .ok_or_else(|| Error::GiftNotFound(gift_id.to_owned()))?;
        let kind = EventKind::Thanks {
            gift_id: gift_id.to_owned(),
            to: sender.clone(),
            text: text.to_owned(),
        };
        let seq = self.publish(&mut state, &kind);
        Ok((sender, seq))
    }

    /// Publishes the viewer count if it changed since it was last published. Called on a timer,
    /// so joins and leaves reach the room coalesced.
    pub fn publish_viewers_if_changed(&self) -> Option<u64> {
        let mut state = self.live().ok()?;
        if state.viewers == state.viewers_published {
            return None;
        }
        state.viewers_published = state.viewers;
        let count = state.viewers;
        Some(self.publish(&mut state, &EventKind::Viewers { count }))
    }

    pub fn summary(&self) -> RoomSummary {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        RoomSummary {
            room: self.id.clone(),
            title: self.title.clone(),
            streamer: self.streamer.clone(),
            viewers: state.viewers,
            seq: state.seq,
            opened_ms: self.opened_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::LocalFanout;

    fn room() -> Room {
        Room::new(
            "r1",
            "star",
            "Hello",
            &RoomsConfig::default(),
            Arc::new(Metrics::new()),
            &LocalFanout,
        )
    }

    #[test]
    fn members_see_events_in_order_from_their_snapshot() {
        let r = room();
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let (snap, mut ring) = r.join(7, Role::Viewer, outbox).unwrap();
        assert_eq!(snap.seq, 1);
        assert_eq!(snap.viewers, 1);
        r.gift("g2", "v1", "rose", "Rose", 1).unwrap();
        assert_eq!(r.publish_viewers_if_changed(), Some(3));
        assert_eq!(r.publish_viewers_if_changed(), None);
        let first = ring.try_recv().unwrap();
        assert!(first.as_str().contains(r#""seq":2"#), "{}", first.as_str());
        assert!(ring
            .try_recv()
            .unwrap()
            .as_str()
            .contains(r#""kind":"viewers","count":1"#));
    }

    #[test]
    fn closed_room_refuses_everything() {
        let r = room();
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        r.join(1, Role::Viewer, outbox).unwrap();
        assert_eq!(r.close("bye").unwrap(), 1);
        assert!(matches!(rx.try_recv(), Some(Outbound::Unsubscribe)));
        assert!(matches!(
            r.gift("g", "v", "s", "S", 1),
            Err(Error::RoomNotFound(_))
        ));
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        assert!(r.join(2, Role::Viewer, outbox).is_err());
    }

    #[test]
    fn thanks_need_a_recent_gift() {
        let r = room();
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        assert_eq!(r.thank("g1", "ty").unwrap().0, "v1");
        assert_eq!(r.thank("g9", "ty"), Err(Error::GiftNotFound("g9".into())));
    }
}
