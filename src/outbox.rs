//! A connection's bounded private queue and its kill switch.
//!
//! Acks, receipts and private messages reach a connection's writer through its [`Outbox`]; room
//! events reach it through the room's ring (see `room.rs`). The outbox is bounded twice: in
//! frames (`server.outbox_frames_max`) and in bytes (`server.outbox_bytes_max`), so a few large
//! frames (a join snapshot with hundreds of questions) cannot hold more memory than many small
//! ones. One frame is always accepted into an empty outbox, whatever its size, so a large snapshot
//! alone never counts as slowness. Pushing never waits: a full outbox means the client is not
//! reading, so the connection is kicked as a slow consumer and the pusher (another client's
//! command, a room) carries on.
//!
//! A connection's own replies are different: a client that pipelines many commands is not slow
//! just because their acks are queued. So the connection's reader reads the next command only
//! when the outbox has room for its replies ([`Outbox::poll_room_for_commands`]); until then the
//! client's commands wait in its socket, and TCP slows the client down instead of giftd dropping
//! it. Any task holding an `Outbox` can close the
//! connection with a close code; the first code set wins.
//!
//! The queue is a `VecDeque` that allocates only when something is queued, rather than a channel
//! that allocates a block of slots up front: most of a viewer's life is idle, and thousands of
//! idle connections should cost as little as possible. For the same reason the queue and the kill
//! switch share one allocation, and the connection's two tasks are woken through an
//! [`AtomicWaker`] each in that allocation: a task registers its waker where the connection's
//! state is, so its future keeps no wait of its own (a `Notify`'s wait is 80 bytes in every idle
//! connection's future, and polling it takes a lock), and a push, a kick or a room event wakes
//! the writer with one atomic swap; a kick, or the writer taking an item while the reader waits
//! for room, wakes the reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Message;

use crate::error::CloseCode;
use crate::metrics::OutKind;
use crate::protocol::{EventFrame, Frame};
use crate::room::hub::Subscription;

/// Items one command can queue at most: an ack (or error), a replay of missed events and a room
/// subscription (`join`), or an unsubscribe (`leave`). `server.outbox_frames_max` is at least 8.
pub const COMMAND_ITEMS_MAX: usize = 4;

/// What a connection's writer is asked to do.
pub enum Outbound {
    /// Write one private frame.
    Frame(OutKind, Frame),
    /// Write a member's missed room events, recovered from the room's history, in order.
    Replay(Vec<EventFrame>),
    /// Start forwarding a room's events, from the first one after the subscription's
    /// `through_seq`.
    Subscribe(Subscription),
    /// Forward what the room already sent, then stop.
    Unsubscribe,
    /// Write a control frame: the pong to a client's ping, or the echo of its close frame
    /// (`websocket.rs`).
    Control(Message),
}

#[derive(Clone)]
pub struct Outbox {
    queue: Arc<Queue>,
}

struct Queue {
    /// Held only to push or pop one item; never across `.await`.
    items: Mutex<Items>,
    /// How many items `items` holds, changed under its lock: the writer, woken for a room event
    /// far more often than for a private frame, sees an empty queue without taking the lock.
    queued: AtomicUsize,
    /// The reader waits for room ([`Outbox::poll_room_for_commands`]): the writer wakes it through
    /// its waker in `kick` as it takes items, until it finds room.
    room_wanted: AtomicBool,
    frames_max: usize,
    bytes_max: usize,
    kick: Kick,
}

#[derive(Default)]
struct Items {
    queue: VecDeque<Outbound>,
    /// Bytes of the frames in `queue`.
    bytes: usize,
}

fn frame_bytes(item: &Outbound) -> usize {
    match item {
        Outbound::Frame(_, frame) => frame.len(),
        Outbound::Control(message) => message.len(),
        // Replayed frames are shared with the room's history (bounded by its own config), so
        // they cost this queue no memory of their own.
        Outbound::Replay(_) | Outbound::Subscribe(_) | Outbound::Unsubscribe => 0,
    }
}

/// The writer's end of an [`Outbox`].
pub struct OutboxReceiver {
    queue: Arc<Queue>,
}

impl OutboxReceiver {
    /// The connection's kill switch.
    pub fn kick_switch(&self) -> &Kick {
        &self.queue.kick
    }

    /// The next item, or `None` once the connection has been kicked; until then, registers the
    /// writer's waker, which a push or a kick wakes. Called by the writer task only: a wake-up
    /// goes to the last task that called this.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        // One registration for both, before looking: a push or a kick after the look wakes
        // this task.
        let kick = &self.queue.kick;
        kick.writer.register(cx.waker());
        if kick.is_kicked() {
            return Poll::Ready(None);
        }
        match self.try_recv() {
            Some(item) => Poll::Ready(Some(item)),
            None => Poll::Pending,
        }
    }

    pub fn try_recv(&self) -> Option<Outbound> {
        // A push after this load wakes the writer (`poll_recv` registered it before looking).
        if self.queue.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut items = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        let item = items.queue.pop_front()?;
        self.queue
            .queued
            .store(items.queue.len(), Ordering::Release);
        items.bytes -= frame_bytes(&item);
        if items.queue.is_empty() && items.queue.capacity() > 0 {
            // Idle connections hold no queue memory; private frames are rare enough that
            // allocating again for the next one costs nothing that matters.
            items.queue = VecDeque::new();
        }
        drop(items);
        // Loaded after the lock: a reader that set it before looking under the same lock either
        // saw this take or is woken here (`Outbox::poll_room_for_commands`).
        if self.queue.room_wanted.load(Ordering::Relaxed) {
            self.queue.kick.reader.wake();
        }
        Some(item)
    }
}

/// A connection's kill switch: the close code chosen by the first kick, the node's request that
/// the connection end for shutdown, and the wakers of the connection's two tasks. The writer's
/// is also woken by every push.
pub struct Kick {
    code: OnceLock<CloseCode>,
    shutting_down: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

/// Which of a connection's two tasks waits for a [`Kick`].
#[derive(Clone, Copy, Debug)]
pub enum Waiter {
    /// The task that reads the client's frames (`connection.rs`).
    Reader,
    /// The task that writes to the client: the one that holds the [`OutboxReceiver`].
    Writer,
}

impl Kick {
    fn new() -> Kick {
        Kick {
            code: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            writer: AtomicWaker::new(),
        }
    }

    /// Asks the connection to close with `code`. Only the first call chooses the code.
    pub fn kick(&self, code: CloseCode) {
        if self.code.set(code).is_ok() {
            self.reader.wake();
            self.writer.wake();
        }
    }

    /// Asks the connection to end because the node is shutting down: its reader stops reading,
    /// answers the command in progress and the gifts in flight, then kicks the connection with
    /// 1001 itself. The writer is not told, so it still writes those answers.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// Ready with the close code once the connection has been kicked (for the reader, also with
    /// 1001 once [`Kick::shut_down`] was called); until then, registers the waiting task's waker,
    /// which the kick wakes. Each [`Waiter`] is one task: a second task polling as the same
    /// waiter would take the first one's place.
    pub fn poll_kicked(&self, waiter: Waiter, cx: &mut Context<'_>) -> Poll<CloseCode> {
        // Registered before the check, and `kick` sets the code before it wakes: a kick after
        // the check wakes this task, one before it is seen by the check.
        match waiter {
            Waiter::Reader => self.reader.register(cx.waker()),
            Waiter::Writer => self.writer.register(cx.waker()),
        }
        match self.code.get() {
            Some(code) => Poll::Ready(*code),
            None if matches!(waiter, Waiter::Reader)
                && self.shutting_down.load(Ordering::Acquire) =>
            {
                Poll::Ready(CloseCode::GoingAway)
            }
            None => Poll::Pending,
        }
    }

    /// Resolves once the connection has been kicked (at once if it already was).
    pub async fn kicked(&self, waiter: Waiter) -> CloseCode {
        std::future::poll_fn(|cx| self.poll_kicked(waiter, cx)).await
    }

    /// Whether the connection was asked to close: one atomic load.
    pub fn is_kicked(&self) -> bool {
        self.code.get().is_some()
    }

    /// The close code chosen by whoever kicked first (`Normal` if nobody did).
    pub fn code(&self) -> CloseCode {
        self.code.get().copied().unwrap_or(CloseCode::Normal)
    }
}

impl Outbox {
    /// A new outbox of at most `frames_max` entries and `bytes_max` bytes of frames, and the
    /// receiving end for the writer.
    pub fn new(frames_max: usize, bytes_max: usize) -> (Outbox, OutboxReceiver) {
        assert!(frames_max >= 1 && bytes_max >= 1);
        let queue = Arc::new(Queue {
            items: Mutex::new(Items::default()),
            queued: AtomicUsize::new(0),
            room_wanted: AtomicBool::new(false),
            frames_max,
            bytes_max,
            kick: Kick::new(),
        });
        (
            Outbox {
                queue: queue.clone(),
            },
            OutboxReceiver { queue },
        )
    }

    /// The connection's kill switch.
    pub fn kick_switch(&self) -> &Kick {
        &self.queue.kick
    }

    /// Queues a private frame. Returns false if the connection is gone or was just kicked as slow.
    pub fn push(&self, kind: OutKind, frame: Frame) -> bool {
        self.send(Outbound::Frame(kind, frame))
    }

    pub fn send(&self, item: Outbound) -> bool {
        if self.is_kicked() {
            return false;
        }
        {
            let mut items = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
            let bytes = frame_bytes(&item);
            let full = items.queue.len() >= self.queue.frames_max
                || (!items.queue.is_empty() && items.bytes + bytes > self.queue.bytes_max);
            if full {
                drop(items);
                self.kick(CloseCode::SlowConsumer);
                return false;
            }
            items.bytes += bytes;
            items.queue.push_back(item);
            self.queue
                .queued
                .store(items.queue.len(), Ordering::Release);
        }
        self.wake_writer();
        true
    }

    /// Asks the connection to close with `code`. Only the first call chooses the code.
    pub fn kick(&self, code: CloseCode) {
        self.queue.kick.kick(code);
    }

    /// Wakes the writer: for a push, and for every event the room's hub delivers, to look at its
    /// room's ring (`room/hub.rs`).
    pub fn wake_writer(&self) {
        self.queue.kick.writer.wake();
    }

    /// Whether the queue can take the replies of `commands` more commands (at most
    /// [`COMMAND_ITEMS_MAX`] items each: the next one, and the gifts still in flight) and is at
    /// most half full in bytes.
    pub fn has_room_for_commands(&self, commands: usize) -> bool {
        let items = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        items.queue.len() + COMMAND_ITEMS_MAX * commands <= self.queue.frames_max
            && items.bytes <= self.queue.bytes_max / 2
    }

    /// Ready once [`Outbox::has_room_for_commands`] holds; until then, registers the waiting
    /// task's waker as the reader's in the kill switch, which the writer wakes as it takes items
    /// (a `Notify` would be 32 bytes more in every connection's outbox). Polled by the reader
    /// only.
    pub fn poll_room_for_commands(&self, commands: usize, cx: &mut Context<'_>) -> Poll<()> {
        self.queue.kick.reader.register(cx.waker());
        // Set before looking, and the look takes the queue's lock, which the writer's take
        // holds: a take after the look sees the flag and wakes the reader.
        self.queue.room_wanted.store(true, Ordering::Relaxed);
        if !self.has_room_for_commands(commands) {
            return Poll::Pending;
        }
        // Found: the writer's takes need not wake the reader any more.
        self.queue.room_wanted.store(false, Ordering::Relaxed);
        Poll::Ready(())
    }

    pub fn is_kicked(&self) -> bool {
        self.queue.kick.is_kicked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::ALL_CLOSE_CODES;
    use tokio::task::JoinHandle;

    fn frame(bytes: usize) -> Frame {
        Frame::from("x".repeat(bytes))
    }

    #[test]
    fn frames_bound_kicks_as_slow() {
        let (outbox, rx) = Outbox::new(2, 1 << 20);
        assert!(outbox.push(OutKind::Ack, frame(1)));
        assert!(outbox.push(OutKind::Ack, frame(1)));
        assert!(!outbox.push(OutKind::Ack, frame(1)));
        assert!(outbox.is_kicked());
        assert_eq!(outbox.kick_switch().code(), CloseCode::SlowConsumer);
        assert!(rx.try_recv().is_some());
    }

    #[test]
    fn bytes_bound_kicks_as_slow_but_one_large_frame_fits() {
        let (outbox, rx) = Outbox::new(100, 1000);
        // A frame larger than the byte bound is accepted into an empty outbox.
        assert!(outbox.push(OutKind::Ack, frame(5000)));
        assert!(!outbox.is_kicked());
        assert!(rx.try_recv().is_some());
        assert!(outbox.push(OutKind::Ack, frame(600)));
        assert!(outbox.push(OutKind::Ack, frame(400)));
        assert!(!outbox.push(OutKind::Ack, frame(1)));
        assert_eq!(outbox.kick_switch().code(), CloseCode::SlowConsumer);
    }

    #[test]
    fn draining_frees_the_byte_budget() {
        let (outbox, rx) = Outbox::new(100, 1000);
        for _ in 0..10 {
            assert!(outbox.push(OutKind::Ack, frame(900)));
            assert!(rx.try_recv().is_some());
        }
        assert!(!outbox.is_kicked());
    }

    #[tokio::test]
    async fn the_reader_waits_for_room_for_a_command() {
        let (outbox, rx) = Outbox::new(8, 1 << 20);
        for _ in 0..4 {
            assert!(outbox.push(OutKind::Ack, frame(1)));
        }
        assert!(outbox.has_room_for_commands(1));
        assert!(outbox.push(OutKind::Ack, frame(1)));
        assert!(!outbox.has_room_for_commands(1));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { std::future::poll_fn(|cx| outbox.poll_room_for_commands(1, cx)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(rx.try_recv().is_some());
        waiting.await.unwrap();
        // Half the byte bound is room enough; more is not.
        let (outbox, _rx) = Outbox::new(100, 1000);
        assert!(outbox.push(OutKind::Ack, frame(600)));
        assert!(!outbox.has_room_for_commands(1));
    }

    /// The connection's two tasks, each waiting for the kick, and already waiting when this
    /// returns.
    async fn waiting_for_the_kick(
        outbox: &Outbox,
        rx: OutboxReceiver,
    ) -> (JoinHandle<CloseCode>, JoinHandle<CloseCode>) {
        let reader = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.kick_switch().kicked(Waiter::Reader).await }
        });
        let writer = tokio::spawn(async move { rx.kick_switch().kicked(Waiter::Writer).await });
        tokio::task::yield_now().await;
        (reader, writer)
    }

    #[tokio::test]
    async fn a_kick_wakes_both_waiters_and_resolves_at_once_after() {
        let (outbox, rx) = Outbox::new(8, 1024);
        let (reader, writer) = waiting_for_the_kick(&outbox, rx).await;
        assert!(!reader.is_finished() && !writer.is_finished());
        outbox.kick(CloseCode::SlowConsumer);
        outbox.kick(CloseCode::Normal);
        assert_eq!(reader.await.unwrap(), CloseCode::SlowConsumer);
        assert_eq!(writer.await.unwrap(), CloseCode::SlowConsumer);
        // A waiter that comes after the kick does not wait, however often it asks.
        let kick = outbox.kick_switch();
        assert_eq!(kick.kicked(Waiter::Reader).await, CloseCode::SlowConsumer);
        assert_eq!(kick.kicked(Waiter::Writer).await, CloseCode::SlowConsumer);
    }

    #[tokio::test]
    async fn shutdown_wakes_the_reader_only_and_chooses_no_code() {
        let (outbox, rx) = Outbox::new(8, 1024);
        let (reader, writer) = waiting_for_the_kick(&outbox, rx).await;
        outbox.kick_switch().shut_down();
        assert_eq!(reader.await.unwrap(), CloseCode::GoingAway);
        tokio::task::yield_now().await;
        assert!(
            !writer.is_finished(),
            "the writer still writes the last answers"
        );
        assert!(!outbox.is_kicked());
        assert!(outbox.push(OutKind::Ack, frame(1)));
        // The reader kicks once it has answered; the writer follows.
        outbox.kick(CloseCode::GoingAway);
        assert_eq!(writer.await.unwrap(), CloseCode::GoingAway);
    }

    #[tokio::test]
    async fn a_push_wakes_the_writer_waiting_for_an_item_and_a_kick_ends_them() {
        let (outbox, rx) = Outbox::new(8, 1024);
        let writer = tokio::spawn(async move {
            let mut kinds = Vec::new();
            while let Some(item) = std::future::poll_fn(|cx| rx.poll_recv(cx)).await {
                match item {
                    Outbound::Frame(kind, _) => kinds.push(kind),
                    _ => unreachable!("only frames are pushed"),
                }
            }
            kinds
        });
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        assert!(outbox.push(OutKind::Ack, frame(1)));
        tokio::task::yield_now().await;
        assert!(outbox.push(OutKind::Error, frame(1)));
        tokio::task::yield_now().await;
        assert!(!writer.is_finished());
        outbox.kick(CloseCode::Normal);
        assert_eq!(writer.await.unwrap(), vec![OutKind::Ack, OutKind::Error]);
    }

    #[test]
    fn the_first_kick_chooses_the_code() {
        for code in ALL_CLOSE_CODES {
            let (outbox, _rx) = Outbox::new(8, 1024);
            assert_eq!(outbox.kick_switch().code(), CloseCode::Normal);
            outbox.kick(code);
            outbox.kick(CloseCode::GoingAway);
            assert_eq!(outbox.kick_switch().code(), code);
            assert!(!outbox.push(OutKind::Ack, frame(1)));
        }
    }
}
