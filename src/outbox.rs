//! A connection's bounded private queue and its kill switch.
//!
//! Acks, receipts and private messages reach a connection's writer through its [`Outbox`]; room
//! events reach it through the room's ring (see `room.rs`). Pushing never waits: a full outbox
//! means the client is not reading, so the connection is kicked as a slow consumer and the pusher
//! (another client's command, a room) carries on. Any task holding an `Outbox` can close the
//! connection with a close code; the first code set wins.
//!
//! The queue is a `VecDeque` that allocates only when something is queued, rather than a channel
//! that allocates a block of slots up front: most of a viewer's life is idle, and thousands of
//! idle connections should cost as little as possible.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::CloseCode;
use crate::metrics::OutKind;
use crate::protocol::Frame;

/// What a connection's writer is asked to do.
pub enum Outbound {
    /// Write one private frame.
    Frame(OutKind, Frame),
    /// Start forwarding a room's events.
    Subscribe(broadcast::Receiver<Frame>),
    /// Forward what the room already sent, then stop.
    Unsubscribe,
}

#[derive(Clone)]
pub struct Outbox {
    queue: Arc<Queue>,
    kick: Arc<Kick>,
}

struct Queue {
    /// Held only to push or pop one item; never across `.await`.
    items: Mutex<VecDeque<Outbound>>,
    ready: Notify,
    frames_max: usize,
}

/// The writer's end of an [`Outbox`].
pub struct OutboxReceiver {
    queue: Arc<Queue>,
}

impl OutboxReceiver {
    /// The next queued item, waiting for one if there is none.
    pub async fn recv(&self) -> Outbound {
        loop {
            if let Some(item) = self.try_recv() {
                return item;
            }
            // A push between `try_recv` and here leaves a permit, so this cannot miss it.
            self.queue.ready.notified().await;
        }
    }

    pub fn try_recv(&self) -> Option<Outbound> {
        let mut items = self.queue.items.lock().unwrap_or_else(|p| p.into_inner());
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 0 {
            // Idle connections hold no queue memory; private frames are rare enough that
            // allocating again for the next one costs nothing that matters.
            *items = VecDeque::new();
        }
        item
    }
}

pub struct Kick {
    token: CancellationToken,
    code: AtomicU16,
}

impl Kick {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Asks the connection to close with `code`. Only the first call chooses the code.
    pub fn kick(&self, code: CloseCode) {
        let _ = self
            .code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// The close code chosen by whoever kicked first.
    pub fn code(&self) -> CloseCode {
        let code = self.code.load(Ordering::Acquire);
        ALL_CODES
            .into_iter()
            .find(|c| c.code() == code)
            .unwrap_or(CloseCode::Normal)
    }
}

const ALL_CODES: [CloseCode; 10] = [
    CloseCode::Normal,
    CloseCode::GoingAway,
    CloseCode::InvalidPayload,
    CloseCode::PolicyViolation,
    CloseCode::TooBig,
    CloseCode::InternalError,
    CloseCode::SlowConsumer,
    CloseCode::AuthTimeout,
    CloseCode::AuthFailed,
    CloseCode::TooManyErrors,
];

impl Outbox {
    /// A new outbox of `frames_max` entries and the receiving end for the writer.
    pub fn new(frames_max: usize) -> (Outbox, OutboxReceiver) {
        assert!(frames_max >= 1);
        let queue = Arc::new(Queue {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            frames_max,
        });
        let kick = Arc::new(Kick {
            token: CancellationToken::new(),
            code: AtomicU16::new(0),
        });
        (
            Outbox {
                queue: queue.clone(),
                kick,
            },
            OutboxReceiver { queue },
        )
    }

    pub fn kick_handle(&self) -> Arc<Kick> {
        self.kick.clone()
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
            if items.len() >= self.queue.frames_max {
                drop(items);
                self.kick(CloseCode::SlowConsumer);
                return false;
            }
            items.push_back(item);
        }
        self.queue.ready.notify_one();
        true
    }

    /// Asks the connection to close with `code`. Only the first call chooses the code.
    pub fn kick(&self, code: CloseCode) {
        self.kick.kick(code);
    }

    pub fn is_kicked(&self) -> bool {
        self.kick.token.is_cancelled()
    }
}
