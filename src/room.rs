//! A live room: its members, its event sequence and its ring of encoded events.
//!
//! A `Room` is the room's **sequencer**: it lives on the one node that owns the room (in a
//! cluster, the holder of the room's lease; see `cluster.rs`). Every room event is numbered and
//! encoded once, under the room's lock, delivered to the members on this node through the room's
//! hub (`room/hub.rs`, a bounded broadcast ring that each member's writer reads at its own pace)
//! and handed to the room's link (`fanout.rs`), which carries it to the room's replicas on other
//! nodes (`room/replica.rs`). A writer that falls more than `room_ring_frames` behind is dropped
//! as a slow consumer, and neither the room nor the other members ever wait for it. Publishing is
//! O(1) under the lock: numbering, encoding, one ring push and one bounded queue push. Because
//! numbering and pushing happen under the same lock, every member sees events in sequence order
//! with no gaps.
//!
//! Members on other nodes count too: their nodes report how many viewers and streamer
//! connections they hold ([`Room::report`]), and the room's viewer count and streamer-away timer
//! use the cluster's totals.
//!
//! The lock is a plain mutex held for short, synchronous sections only (never across `.await`),
//! which keeps the registry lock-free in the common case and the room's state consistent.
//!
//! Each room has an **epoch**, a random id of this incarnation of the room: with `seq` it is an
//! event's position. The room also keeps a **history** of its latest events, bounded by
//! `rooms.history_events_max` and `rooms.history_age_ms`, sharing the encoded frames with the
//! ring. A member that lost its connection joins again with the position it last saw; if the
//! history still holds every event after it (same epoch, nothing evicted, nothing too old), those
//! events are replayed in order before live ones, with no gap and no duplicate, because the
//! replay and the ring subscription are taken under the same lock.

pub mod combo;
pub mod goal;
pub mod hub;
pub mod leaderboard;
pub mod pk;
pub mod registry;
pub mod replica;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Role;
use crate::config::RoomsConfig;
use crate::error::{Error, Result};
use crate::fanout::{Fanout, RoomLink};
use crate::ledger::{now_ms, Gifter};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::protocol::server::{
    Board, ComboView, EventKind, GoalView, PaidView, QuestionView, Ranked, Snapshot,
};
use crate::protocol::{epoch_hex, Event, EventFrame};
use crate::question::Questions;

use combo::Combos;
use goal::{EndReason, Goal};
use hub::Subscription;
use hub::{Counts, Hub};
use leaderboard::Boards;

/// Identifies one connection on this node.
pub type ConnId = u64;

/// One kept event.
struct Kept {
    at: Instant,
    event: EventFrame,
}

/// The members another node holds in this room, as it last reported them.
struct Remote {
    counts: Counts,
    at: Instant,
}

struct State {
    seq: u64,
    /// The latest events, oldest first, for recovery.
    history: VecDeque<Kept>,
    /// Other nodes' members, by node id.
    remote: HashMap<String, Remote>,
    viewers_published: u64,
    /// Since when the streamer has had no connection in the room on any node. Monotonic, so a
    /// wall-clock jump cannot close a room early or keep it open.
    streamer_away_since: Option<Instant>,
    questions: Questions,
    /// Recent gift id -> sender, so the streamer can thank them; oldest dropped first.
    recent_gifts: HashMap<String, String>,
    recent_order: VecDeque<String>,
    /// Senders' gift combos (`room/combo.rs`).
    combos: Combos,
    /// The streamer's current goal (`room/goal.rs`).
    goal: Option<Goal>,
    /// Top gifters (`room/leaderboard.rs`).
    boards: Boards,
    /// The room's PK battle or open challenge, as last published (`room/pk.rs`).
    pk: Option<crate::ledger::pk::PkBattle>,
    /// A ledger call for the battle is under way.
    pk_calling: bool,
    /// The battle whose `pk_ended` the room published last: records of it that arrive late (a
    /// notice overtaken by another) are ignored.
    pk_ended: Option<String>,
}

pub struct Room {
    pub id: String,
    /// This incarnation of the room, as the wire shows it (16 hex digits of `epoch_id`).
    pub epoch: String,
    pub epoch_id: u64,
    pub streamer: String,
    pub title: String,
    pub opened_ms: u64,
    hub: Arc<Hub>,
    link: Box<dyn RoomLink>,
    state: Mutex<State>,
    closed: AtomicBool,
    /// The room ticker has started closing the room.
    closing: AtomicBool,
    /// A read of the all-time board from the ledger is under way.
    all_time_reading: AtomicBool,
    recent_gifts_max: usize,
    /// Members' mean backlog at which commands are refused with `room_busy`.
    busy_backlog_events: u64,
    history_events_max: usize,
    history_age: Duration,
    /// A node's report older than this no longer counts.
    report_stale: Duration,
    metrics: Arc<Metrics>,
}

/// What a member that joins with `since` gets.
pub enum Entry {
    /// Its position could not be recovered: a fresh snapshot, events from `snapshot.seq + 1`.
    Fresh(Snapshot),
    /// The events after its position, to deliver before live ones.
    Recovered {
        since_seq: u64,
        missed: Vec<EventFrame>,
    },
}

impl Entry {
    /// The last event the member has once this entry is delivered.
    pub fn through_seq(&self) -> u64 {
        match self {
            Entry::Fresh(snapshot) => snapshot.seq,
            Entry::Recovered { since_seq, missed } => since_seq + missed.len() as u64,
        }
    }
}

/// A member's last seen position, as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

/// A room as `GET /rooms` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RoomSummary {
    pub room: String,
    pub title: String,
    pub streamer: String,
    pub viewers: u64,
    pub epoch: String,
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
        let summary = RoomSummary {
            room: id.to_owned(),
            title: title.to_owned(),
            streamer: streamer.to_owned(),
            viewers: 0,
            epoch: String::new(),
            seq: 0,
            opened_ms: now_ms(),
        };
        let hub = Arc::new(Hub::new(
            config.room_ring_frames,
            config.members_max,
            config.busy_backlog_events,
        ));
        Room::build(&summary, rand::random(), hub, config, metrics, fanout)
    }

    fn build(
        summary: &RoomSummary,
        epoch_id: u64,
        hub: Arc<Hub>,
        config: &RoomsConfig,
        metrics: Arc<Metrics>,
        fanout: &dyn Fanout,
    ) -> Room {
        Room {
            id: summary.room.clone(),
            epoch: epoch_hex(epoch_id),
            epoch_id,
            streamer: summary.streamer.clone(),
            title: summary.title.clone(),
            opened_ms: summary.opened_ms,
            hub,
            link: fanout.link(&summary.room),
            state: Mutex::new(State {
                seq: 0,
                history: VecDeque::new(),
                remote: HashMap::new(),
                viewers_published: 0,
                streamer_away_since: Some(Instant::now()),
                questions: Questions::new(config.questions_open_max),
                recent_gifts: HashMap::new(),
                recent_order: VecDeque::new(),
                combos: Combos::new(
                    Duration::from_millis(config.combo_window_ms),
                    config.combos_open_max,
                ),
                goal: None,
                boards: Boards::new(config),
                pk: None,
                pk_calling: false,
                pk_ended: None,
            }),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            all_time_reading: AtomicBool::new(false),
            recent_gifts_max: config.recent_gifts_max,
            busy_backlog_events: config.busy_backlog_events as u64,
            history_events_max: config.history_events_max,
            history_age: Duration::from_millis(config.history_age_ms),
            report_stale: Duration::from_millis(config.viewer_count_interval_ms.saturating_mul(3)),
            metrics,
        }
    }

    /// Continues a room whose owner died, on this node (a takeover, see `cluster/takeover.rs`):
    /// the same epoch, and the state its latest events give (`history`, oldest first, each with
    /// its age): the sequence number, the history itself, open and pinned questions, and recent
    /// gifts for thanking. The members this node had through its replica keep their place in
    /// `hub`. Returns `None` if the history is empty or ends with the room's close.
    pub fn resume(
        summary: &RoomSummary,
        epoch_id: u64,
        hub: Arc<Hub>,
        history: Vec<(EventFrame, Duration)>,
        config: &RoomsConfig,
        metrics: Arc<Metrics>,
        fanout: &dyn Fanout,
    ) -> Option<Room> {
        let room = Room::build(summary, epoch_id, hub, config, metrics, fanout);
        {
            let mut state = room.lock();
            let now = Instant::now();
            for (event, age) in history {
                assert_eq!(event.epoch, epoch_id, "a room resumes its own epoch only");
                assert!(
                    state.seq == 0 || event.seq == state.seq + 1,
                    "a room's kept events are gap-free"
                );
                let value: serde_json::Value = serde_json::from_str(event.bytes.as_str()).ok()?;
                let at = now.checked_sub(age).unwrap_or(now);
                match value["kind"].as_str() {
                    Some("room_closed") => return None,
                    Some("gift") => {
                        if let (Some(id), Some(from)) =
                            (value["gift_id"].as_str(), value["from"].as_str())
                        {
                            room.remember_gift(&mut state, id, from);
                            let sticker = value["sticker"].as_str().unwrap_or_default();
                            let price = value["price_coins"].as_u64().unwrap_or(0);
                            let combo = serde_json::from_value::<ComboView>(value["combo"].clone());
                            state.combos.restore(from, sticker, price, combo.ok(), at);
                            if let Some(goal) = state.goal.as_mut() {
                                goal.add(sticker, price);
                            }
                        }
                    }
                    Some("combo_end") => {
                        if let (Some(from), Some(sticker)) =
                            (value["from"].as_str(), value["sticker"].as_str())
                        {
                            state.combos.forget(from, sticker);
                        }
                    }
                    Some("goal_set" | "goal_progress" | "goal_reached") => {
                        let view = serde_json::from_value::<GoalView>(value["goal"].clone());
                        state.goal = view.ok().map(Goal::restore);
                    }
                    Some("goal_ended") => state.goal = None,
                    Some(kind @ ("pk_invite" | "pk_started" | "pk_score" | "pk_ended")) => {
                        let battle = serde_json::from_value(value["battle"].clone()).ok();
                        Room::pk_restore(&mut state, kind, battle);
                    }
                    Some("question") => {
                        if let Ok(view) = serde_json::from_value::<QuestionView>(value.clone()) {
                            if let Some(paid) = &view.paid {
                                room.remember_gift(&mut state, &paid.gift_id, &view.from);
                                if let Some(goal) = state.goal.as_mut() {
                                    goal.add(&paid.sticker, paid.price_coins);
                                }
                            }
                            state.questions.restore(view, now_ms());
                        }
                    }
                    Some("answer") => {
                        if let Some(id) = value["question_id"].as_u64() {
                            let _ = state.questions.answer(id, now_ms());
                        }
                    }
                    Some("viewers") => {
                        state.viewers_published = value["count"].as_u64().unwrap_or(0);
                    }
                    _ => {}
                }
                state.seq = event.seq;
                if room.history_events_max > 0 {
                    if state.history.len() == room.history_events_max {
                        state.history.pop_front();
                    }
                    state.history.push_back(Kept { at, event });
                }
            }
            if state.seq == 0 {
                return None;
            }
        }
        Some(room)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True once, for the caller that is to close the room (the ticker closes off its own task).
    pub fn claim_close(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }

    /// Locks the state of a live room. The guard is never held across `.await`.
    fn live(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.lock();
        if self.is_closed() {
            return Err(Error::RoomNotFound(self.id.clone()));
        }
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a new command, before any money moves, while this node's members are behind the
    /// room (`room/hub.rs`: their mean backlog, or a writer that is behind with a socket that is
    /// not full) or the room's link to its other nodes is backed up; the client may retry.
    pub fn admit(&self) -> Result<()> {
        if self.is_closed() {
            return Err(Error::RoomNotFound(self.id.clone()));
        }
        if self.hub.backlog_mean_events() >= self.busy_backlog_events || self.hub.node_behind() {
            self.metrics.room_busy.inc();
            return Err(Error::RoomBusy);
        }
        self.link.admit().inspect_err(|e| {
            if matches!(e, Error::RoomBusy) {
                self.metrics.room_busy.inc();
            }
        })
    }

    /// This node sequences the room under its cluster lease `term`, and may take commands until
    /// `until` (`cluster/link.rs`).
    pub fn hold(&self, term: u64, until: Instant) {
        self.link.hold(term, until);
    }

    /// Numbers, encodes and delivers one event. Must be called with the lock held.
    fn publish(&self, state: &mut State, kind: &EventKind) -> u64 {
        state.seq += 1;
        let event = EventFrame {
            epoch: self.epoch_id,
            seq: state.seq,
            bytes: Event::encode(&self.id, &self.epoch, state.seq, kind),
        };
        if self.history_events_max > 0 {
            if state.history.len() == self.history_events_max {
                state.history.pop_front();
            }
            state.history.push_back(Kept {
                at: Instant::now(),
                event: event.clone(),
            });
        }
        self.link
            .publish(&event, matches!(kind, EventKind::RoomClosed { .. }));
        self.hub.deliver(event);
        self.metrics.room_event(kind);
        state.seq
    }

    /// The events after `since`, if the history still holds all of them, none older than the
    /// history age.
    fn missed_since(&self, state: &State, since: &Position) -> Option<Vec<EventFrame>> {
        if since.epoch != self.epoch || since.seq > state.seq || self.history_events_max == 0 {
            return None;
        }
        if since.seq == state.seq {
            return Some(Vec::new());
        }
        let first = state.history.front()?;
        if first.event.seq > since.seq + 1 {
            return None;
        }
        let start = (since.seq + 1 - first.event.seq) as usize;
        let oldest_needed = &state.history[start];
        if oldest_needed.at.elapsed() > self.history_age {
            return None;
        }
        let missed: Vec<EventFrame> = state
            .history
            .range(start..)
            .map(|k| k.event.clone())
            .collect();
        assert_eq!(
            missed.len() as u64,
            state.seq - since.seq,
            "history is gap-free"
        );
        Some(missed)
    }

    /// The cluster's totals: this node's members plus every fresh report from other nodes.
    fn counts(&self, state: &State) -> Counts {
        let mut counts = self.hub.counts();
        for remote in state.remote.values() {
            if remote.at.elapsed() <= self.report_stale {
                counts.viewers += remote.counts.viewers;
                counts.streamers += remote.counts.streamers;
                // A user watching on two nodes counts once per node.
                counts.users += remote.counts.users;
            }
        }
        counts
    }

    fn snapshot(&self, state: &mut State) -> Snapshot {
        let (questions_open, questions_pinned) = state.questions.snapshot(now_ms());
        let counts = self.counts(state);
        Snapshot {
            room: self.id.clone(),
            title: self.title.clone(),
            streamer: self.streamer.clone(),
            viewers: counts.viewers,
            users: counts.users,
            epoch: self.epoch.clone(),
            seq: state.seq,
            recovered: None,
            questions_open,
            questions_pinned,
            goal: state.goal.as_ref().map(|g| Box::new(g.view().clone())),
            pk: state.pk.as_ref().map(|b| Box::new(b.clone())),
            leaderboards: Box::new(state.boards.view()),
        }
    }

    fn entry(&self, state: &mut State, since: Option<&Position>) -> Entry {
        match since.map(|p| (p, self.missed_since(state, p))) {
            Some((p, Some(missed))) => Entry::Recovered {
                since_seq: p.seq,
                missed,
            },
            Some((_, None)) => {
                let mut snapshot = self.snapshot(state);
                snapshot.recovered = Some(false);
                Entry::Fresh(snapshot)
            }
            None => Entry::Fresh(self.snapshot(state)),
        }
    }

    /// Adds a member. The snapshot and the ring subscription are taken under one lock, so the
    /// member's first event is exactly `snapshot.seq + 1`.
    pub fn join(
        &self,
        conn: ConnId,
        role: Role,
        user: &str,
        outbox: Outbox,
    ) -> Result<(Snapshot, Subscription)> {
        match self.join_since(conn, role, user, outbox, None)? {
            (Entry::Fresh(snapshot), ring) => Ok((snapshot, ring)),
            (Entry::Recovered { .. }, _) => unreachable!("no position was given"),
        }
    }

    /// Adds a member that last saw `since`, if given. Its missed events (or a fresh snapshot) and
    /// the ring subscription are taken under one lock, so what follows them is exactly the next
    /// event.
    pub fn join_since(
        &self,
        conn: ConnId,
        role: Role,
        user: &str,
        outbox: Outbox,
        since: Option<&Position>,
    ) -> Result<(Entry, Subscription)> {
        let mut state = self.live()?;
        let mut subscription = self.hub.join(conn, role, user, outbox)?;
        if role == Role::Streamer {
            state.streamer_away_since = None;
        }
        let entry = self.entry(&mut state, since);
        subscription.through_seq = entry.through_seq();
        Ok((entry, subscription))
    }

    /// What a member joining on another node gets: its missed events or a snapshot. That node
    /// subscribed its member to its replica before asking, and skips what the entry covers.
    pub fn entry_since(&self, since: Option<&Position>) -> Result<Entry> {
        let mut state = self.live()?;
        Ok(self.entry(&mut state, since))
    }

    pub fn leave(&self, conn: ConnId) {
        let mut state = self.lock();
        if self.hub.leave(conn) == Some(Role::Streamer) && self.counts(&state).streamers == 0 {
            state.streamer_away_since = Some(Instant::now());
        }
    }

    /// Records how many members another node holds in this room.
    pub fn report(&self, node: &str, counts: Counts) {
        let mut state = self.lock();
        state.remote.insert(
            node.to_owned(),
            Remote {
                counts,
                at: Instant::now(),
            },
        );
        if counts.streamers > 0 {
            state.streamer_away_since = None;
        }
    }

    /// Whether the streamer has had no connection in the room, on any node, for at least `away`.
    pub fn streamer_away_for(&self, away: Duration, now: Instant) -> bool {
        let mut state = self.lock();
        state
            .remote
            .retain(|_, r| now.saturating_duration_since(r.at) <= self.report_stale);
        if self.counts(&state).streamers > 0 {
            state.streamer_away_since = None;
            return false;
        }
        let since = *state.streamer_away_since.get_or_insert(now);
        now.saturating_duration_since(since) >= away
    }

    /// Closes the room: publishes `room_closed` and tells every member's writer to finish with
    /// the ring. Returns the final sequence number. A PK battle is ended in the ledger before
    /// (`session/pk.rs`, which publishes its `pk_ended`); one still shown here, because the
    /// ledger could not be reached, ends by its clock in the ledger and in the other room.
    pub fn close(&self, reason: &str) -> Result<u64> {
        let seq = {
            let mut state = self.live()?;
            state.pk = None;
            for ended in state.combos.end_all() {
                self.end_combo(&mut state, ended);
            }
            self.end_goal_with(&mut state, EndReason::RoomClosed);
            self.closed.store(true, Ordering::Release);
            self.publish(
                &mut state,
                &EventKind::RoomClosed {
                    reason: reason.to_owned(),
                },
            )
        };
        self.hub.close();
        Ok(seq)
    }

    /// Stops sequencing the room on this node without a last event, because its lease was lost
    /// and another node may run it now. Members are closed with 4002 `resync` and re-join
    /// wherever the room now is.
    pub fn abandon(&self) {
        {
            let _state = self.lock();
            self.closed.store(true, Ordering::Release);
            // Events numbered here but not yet on their way must not reach the room's next
            // owner, which numbers from what reached the stream.
            self.link.revoke();
        }
        self.hub.kick_all(crate::error::CloseCode::Resync);
    }

    /// Publishes an event that needs nothing of the room's state but its sequence (red packets,
    /// whose state lives in the ledger).
    pub fn announce(&self, kind: &EventKind) -> Result<u64> {
        let mut state = self.live()?;
        Ok(self.publish(&mut state, kind))
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
        let (ended, combo) = state
            .combos
            .gift(from, sticker, price_coins, Instant::now());
        for ended in ended {
            self.end_combo(&mut state, ended);
        }
        let kind = EventKind::Gift {
            gift_id: gift_id.to_owned(),
            from: from.to_owned(),
            sticker: sticker.to_owned(),
            sticker_name: sticker_name.to_owned(),
            price_coins,
            combo,
        };
        let seq = self.publish(&mut state, &kind);
        self.remember_gift(&mut state, gift_id, from);
        self.goal_gift(&mut state, sticker, price_coins);
        self.rank_gift(&mut state, from, price_coins);
        Ok(seq)
    }

    /// Counts a published gift on the room's leaderboards.
    fn rank_gift(&self, state: &mut State, from: &str, price_coins: u64) {
        let untracked = state.boards.gift(from, price_coins, now_ms());
        self.metrics
            .leaderboard_senders_untracked
            .inc_by(untracked.into());
    }

    fn end_combo(&self, state: &mut State, ended: combo::Ended) {
        self.metrics.combos.inc();
        self.publish(state, &ended.event());
    }

    /// The room ticker's beat for the room's mechanics: ends lapsed combos and a goal past its
    /// deadline, and publishes the goal's progress and the leaderboards that changed (coalesced
    /// like viewer counts).
    pub fn tick(&self, now: Instant) {
        let Ok(mut state) = self.live() else {
            return;
        };
        for ended in state.combos.lapse(now) {
            self.end_combo(&mut state, ended);
        }
        self.tick_goal(&mut state, now_ms());
        self.publish_boards(&mut state);
    }

    fn publish_boards(&self, state: &mut State) {
        state.boards.expire(now_ms());
        for (board, top) in state.boards.changed() {
            self.publish(state, &EventKind::Leaderboard { board, top });
        }
    }

    /// Whether the all-time board should be read from the ledger now (gifts were published since
    /// the last read, which is at least `rooms.leaderboard_all_time_interval_ms` old, and no read
    /// is under way). A `true` must be answered with [`Room::set_all_time`].
    pub fn all_time_due(&self) -> bool {
        if self.all_time_reading.load(Ordering::Acquire) || self.is_closed() {
            return false;
        }
        let due = self.lock().boards.all_time_due(now_ms());
        if due {
            self.all_time_reading.store(true, Ordering::Release);
        }
        due
    }

    /// The all-time board as the ledger gave it (or the read's failure, to try again on the next
    /// beat); published at once if its top changed.
    pub fn set_all_time(&self, read: Result<Vec<Gifter>>) {
        self.metrics.leaderboard_read(read.is_ok());
        let mut state = self.lock();
        self.all_time_reading.store(false, Ordering::Release);
        match read {
            Ok(gifters) => state.boards.set_all_time(ranked(1, gifters)),
            Err(e) => {
                tracing::warn!(room = %self.id, error = %e, "could not read the all-time leaderboard");
                state.boards.all_time_retry();
                return;
            }
        }
        if !self.is_closed() {
            self.publish_boards(&mut state);
        }
    }

    /// Gifters each board shows.
    pub fn leaderboard_top_n(&self) -> usize {
        self.lock().boards.top_n()
    }

    /// The session or window board's top N, and `around`'s entry with up to `neighbours` on each
    /// side (empty if that user is not on the board).
    pub fn leaderboard(
        &self,
        board: Board,
        around: Option<&str>,
        neighbours: usize,
    ) -> Result<(Vec<Ranked>, Vec<Ranked>)> {
        assert_ne!(
            board,
            Board::AllTime,
            "the all-time board is read from the ledger"
        );
        let mut state = self.live()?;
        state.boards.expire(now_ms());
        let top = state.boards.top(board);
        let around = around.map_or_else(Vec::new, |user| {
            state.boards.around(board, user, neighbours)
        });
        Ok((top, around))
    }

    /// Rebuilds the session and window boards from the ledger's gifts in the room (after a
    /// takeover): per-sender sums since the room opened, and the window's gifts by step since
    /// [`Room::boards_window_since_ms`].
    pub fn restore_boards(&self, session: &[(String, u64, u64)], window: &[(String, u64, u64)]) {
        let mut state = self.lock();
        state.boards.restore(session, window, now_ms());
    }

    /// Where the window board begins now.
    pub fn boards_window_since_ms(&self) -> u64 {
        self.lock().boards.window_start_ms(now_ms())
    }

    /// The step in which the window board counts gifts.
    pub fn boards_step_ms(&self) -> u64 {
        self.lock().boards.step_ms()
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
        let counted = paid.as_ref().map(|p| (p.sticker.clone(), p.price_coins));
        let view = state.questions.ask(from, text, paid, pin_secs, now_ms());
        let seq = self.publish(&mut state, &EventKind::Question(view.clone()));
        if let Some((sticker, price_coins)) = counted {
            self.goal_gift(&mut state, &sticker, price_coins);
            self.rank_gift(&mut state, from, price_coins);
        }
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

    /// Publishes the viewer count (the cluster's) if it changed since it was last published.
    /// Called on a timer, so joins and leaves reach the room coalesced.
    pub fn publish_viewers_if_changed(&self) -> Option<u64> {
        let mut state = self.live().ok()?;
        let count = self.counts(&state).viewers;
        if count == state.viewers_published {
            return None;
        }
        state.viewers_published = count;
        Some(self.publish(&mut state, &EventKind::Viewers { count }))
    }

    pub fn summary(&self) -> RoomSummary {
        let state = self.lock();
        RoomSummary {
            room: self.id.clone(),
            title: self.title.clone(),
            streamer: self.streamer.clone(),
            viewers: self.counts(&state).viewers,
            epoch: self.epoch.clone(),
            seq: state.seq,
            opened_ms: self.opened_ms,
        }
    }
}

/// Ranks gifters given in board order, the first at `first_rank`.
pub fn ranked(first_rank: u64, gifters: Vec<Gifter>) -> Vec<Ranked> {
    gifters
        .into_iter()
        .zip(first_rank..)
        .map(|(g, rank)| Ranked {
            rank,
            user: g.user,
            coins: g.coins,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::LocalFanout;
    use crate::outbox::Outbound;

    fn room() -> Room {
        room_with(RoomsConfig::default())
    }

    fn room_with(config: RoomsConfig) -> Room {
        Room::new(
            "r1",
            "star",
            "Hello",
            &config,
            Arc::new(Metrics::new()),
            &LocalFanout,
        )
    }

    #[test]
    fn members_see_events_in_order_from_their_snapshot() {
        let r = room();
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let (snap, mut ring) = r.join(7, Role::Viewer, "bob", outbox).unwrap();
        assert_eq!(snap.seq, 1);
        assert_eq!(snap.viewers, 1);
        r.gift("g2", "v1", "rose", "Rose", 1).unwrap();
        assert_eq!(r.publish_viewers_if_changed(), Some(3));
        assert_eq!(r.publish_viewers_if_changed(), None);
        let first = ring.ring.try_recv().unwrap().bytes;
        assert!(first.as_str().contains(r#""seq":2"#), "{}", first.as_str());
        assert!(ring
            .ring
            .try_recv()
            .unwrap()
            .bytes
            .as_str()
            .contains(r#""kind":"viewers","count":1"#));
    }

    #[test]
    fn closed_room_refuses_everything() {
        let r = room();
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        r.join(1, Role::Viewer, "bob", outbox).unwrap();
        assert_eq!(r.close("bye").unwrap(), 1);
        assert!(matches!(rx.try_recv(), Some(Outbound::Unsubscribe)));
        assert!(matches!(
            r.gift("g", "v", "s", "S", 1),
            Err(Error::RoomNotFound(_))
        ));
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        assert!(r.join(2, Role::Viewer, "bob", outbox).is_err());
    }

    fn at(r: &Room, seq: u64) -> Position {
        Position {
            epoch: r.epoch.clone(),
            seq,
        }
    }

    /// The positions of `events`, read from their JSON, which must agree with their frames'.
    fn seqs(events: &[EventFrame]) -> Vec<u64> {
        events
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_str(e.bytes.as_str()).unwrap();
                assert_eq!(v["seq"].as_u64(), Some(e.seq));
                e.seq
            })
            .collect()
    }

    #[test]
    fn a_member_that_rejoins_gets_exactly_the_events_it_missed_then_live_ones() {
        let r = room();
        for i in 0..10 {
            r.gift(&format!("g{i}"), "v1", "rose", "Rose", 1).unwrap();
        }
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let (entry, mut ring) = r
            .join_since(7, Role::Viewer, "bob", outbox, Some(&at(&r, 4)))
            .unwrap();
        let Entry::Recovered { since_seq, missed } = entry else {
            panic!("not recovered")
        };
        assert_eq!(since_seq, 4);
        assert_eq!(seqs(&missed), (5..=10).collect::<Vec<_>>());
        r.gift("g10", "v1", "rose", "Rose", 1).unwrap();
        assert_eq!(seqs(&[ring.ring.try_recv().unwrap()]), vec![11]);
    }

    #[test]
    fn an_up_to_date_member_recovers_nothing_and_a_foreign_position_gets_a_snapshot() {
        let r = room();
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        let (entry, _) = r
            .join_since(1, Role::Viewer, "bob", outbox.clone(), Some(&at(&r, 1)))
            .unwrap();
        assert!(
            matches!(entry, Entry::Recovered { since_seq: 1, ref missed } if missed.is_empty())
        );
        for since in [
            Position {
                epoch: "other".into(),
                seq: 0,
            },
            at(&r, 2), // ahead of the room
        ] {
            let (entry, _) = r
                .join_since(2, Role::Viewer, "bob", outbox.clone(), Some(&since))
                .unwrap();
            let Entry::Fresh(snapshot) = entry else {
                panic!("recovered from {since:?}")
            };
            assert_eq!((snapshot.recovered, snapshot.seq), (Some(false), 1));
            assert_eq!(snapshot.epoch, r.epoch);
        }
    }

    #[test]
    fn history_is_bounded_by_count() {
        let r = room_with(RoomsConfig {
            history_events_max: 5,
            ..RoomsConfig::default()
        });
        for i in 0..20 {
            r.gift(&format!("g{i}"), "v1", "rose", "Rose", 1).unwrap();
        }
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        // Events 16..=20 are kept: from 15 on it recovers, from 14 it cannot.
        let (entry, _) = r
            .join_since(1, Role::Viewer, "bob", outbox.clone(), Some(&at(&r, 15)))
            .unwrap();
        assert!(matches!(entry, Entry::Recovered { ref missed, .. } if missed.len() == 5));
        let (entry, _) = r
            .join_since(2, Role::Viewer, "bob", outbox, Some(&at(&r, 14)))
            .unwrap();
        assert!(matches!(entry, Entry::Fresh(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn history_is_bounded_by_age() {
        let r = room_with(RoomsConfig {
            history_age_ms: 60_000,
            ..RoomsConfig::default()
        });
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        r.gift("g2", "v1", "rose", "Rose", 1).unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        let (outbox, _rx) = Outbox::new(8, 1 << 20);
        // Event 1 is 61 s old: too old. Event 2 is 31 s old: fine.
        let (entry, _) = r
            .join_since(1, Role::Viewer, "bob", outbox.clone(), Some(&at(&r, 0)))
            .unwrap();
        assert!(matches!(entry, Entry::Fresh(_)));
        let (entry, _) = r
            .join_since(2, Role::Viewer, "bob", outbox, Some(&at(&r, 1)))
            .unwrap();
        assert!(matches!(entry, Entry::Recovered { ref missed, .. } if missed.len() == 1));
    }

    #[test]
    fn each_room_has_its_own_epoch() {
        assert_ne!(room().epoch, room().epoch);
        assert_eq!(room().epoch.len(), 16);
    }

    /// The room `r` continued from `r`'s kept events, as a takeover does.
    fn resumed(r: &Room) -> Room {
        let history: Vec<(EventFrame, Duration)> = r
            .lock()
            .history
            .iter()
            .map(|k| (k.event.clone(), k.at.elapsed()))
            .collect();
        Room::resume(
            &r.summary(),
            r.epoch_id,
            Arc::new(Hub::new(16, 16, 10)),
            history,
            &RoomsConfig::default(),
            Arc::new(Metrics::new()),
            &LocalFanout,
        )
        .expect("a live room resumes")
    }

    /// The kinds of the events after `seq`, from the room's history.
    fn kinds_after(r: &Room, seq: u64) -> Vec<String> {
        r.lock()
            .history
            .iter()
            .filter(|k| k.event.seq > seq)
            .map(|k| {
                let v: serde_json::Value = serde_json::from_str(k.event.bytes.as_str()).unwrap();
                v["kind"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn leaderboards_are_published_on_the_beat_only_when_their_top_changed() {
        let r = room();
        let first = r.summary().seq;
        for (i, (from, coins)) in [("bob", 10), ("amy", 10), ("bob", 5)].iter().enumerate() {
            r.gift(&format!("g{i}"), from, "rose", "Rose", *coins)
                .unwrap();
        }
        assert!(
            !kinds_after(&r, first).contains(&"leaderboard".to_owned()),
            "no board is published per gift"
        );
        r.tick(Instant::now());
        let kinds = kinds_after(&r, first);
        assert_eq!(kinds.iter().filter(|k| *k == "leaderboard").count(), 2);
        let (top, around) = r.leaderboard(Board::Session, Some("amy"), 0).unwrap();
        let users: Vec<(&str, u64, u64)> = top
            .iter()
            .map(|e| (e.user.as_str(), e.rank, e.coins))
            .collect();
        assert_eq!(users, [("bob", 1, 15), ("amy", 2, 10)]);
        assert_eq!(around, top[1..]);
        // Nothing changed: the next beat publishes nothing.
        let seq = r.summary().seq;
        r.tick(Instant::now());
        assert_eq!(r.summary().seq, seq);

        // The all-time board is read once after gifts, and published when the read returns.
        assert!(r.all_time_due());
        assert!(!r.all_time_due(), "one read at a time");
        r.set_all_time(Ok(vec![Gifter {
            user: "bob".into(),
            coins: 115,
        }]));
        assert_eq!(kinds_after(&r, seq), ["leaderboard"]);
        assert!(!r.all_time_due(), "no gift since the read");
        let snapshot = r.snapshot(&mut r.lock());
        assert_eq!(snapshot.leaderboards.all_time[0].coins, 115);
        assert_eq!(snapshot.leaderboards.session.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_room_continues_open_combos_and_the_goal_and_ends_each_once() {
        let r = room();
        let (goal, _) = r.set_goal(30, Some("clap".into()), None).unwrap();
        r.gift("g1", "bob", "clap", "Clap", 10).unwrap();
        r.gift("g2", "bob", "clap", "Clap", 10).unwrap();
        r.gift("g3", "amy", "rose", "Rose", 1).unwrap();
        r.gift("g4", "amy", "rose", "Rose", 1).unwrap();
        // amy's combo ends before the old owner dies; bob's is still open.
        r.gift("g5", "amy", "heart", "Heart", 5).unwrap();
        let last = r.summary().seq;

        let next = resumed(&r);
        assert_eq!(next.summary().seq, last);
        let snapshot = next.snapshot(&mut next.lock());
        assert_eq!(snapshot.goal.as_ref().map(|g| g.progress_coins), Some(20));
        assert_eq!(
            snapshot.goal.as_ref().map(|g| g.goal_id),
            Some(goal.goal_id)
        );
        // bob's combo continues on the new owner and crosses the goal.
        next.gift("g6", "bob", "clap", "Clap", 10).unwrap();
        tokio::time::advance(Duration::from_millis(3_000)).await;
        next.tick(Instant::now());
        next.tick(Instant::now());
        let kinds: Vec<String> = kinds_after(&next, last)
            .into_iter()
            .filter(|k| k != "leaderboard")
            .collect();
        assert_eq!(
            kinds,
            ["gift", "goal_reached", "combo_end"],
            "bob's combo ends once, amy's not again, the goal is reached once"
        );
        let combo_end = next
            .lock()
            .history
            .iter()
            .rev()
            .find(|k| k.event.bytes.as_str().contains(r#""kind":"combo_end""#))
            .unwrap()
            .event
            .bytes
            .clone();
        assert!(
            combo_end
                .as_str()
                .contains(r#""from":"bob","sticker":"clap","count":3,"total_coins":30"#),
            "{}",
            combo_end.as_str()
        );
    }

    #[test]
    fn thanks_need_a_recent_gift() {
        let r = room();
        r.gift("g1", "v1", "rose", "Rose", 1).unwrap();
        assert_eq!(r.thank("g1", "ty").unwrap().0, "v1");
        assert_eq!(r.thank("g9", "ty"), Err(Error::GiftNotFound("g9".into())));
    }
}
