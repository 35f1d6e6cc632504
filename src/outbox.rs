//! A connection's bounded private queue and its kill switch.
//!
//! Acks, receipts and private messages reach a connection's writer through its [`Outbox`]; room
//! events reach it through the room's ring (see `room.rs`). Pushing never waits: a full outbox
//! means the client is not reading, so the connection is kicked as a slow consumer and the pusher
//! (another client's command, a room) carries on. Any task holding an `Outbox` can close the
//! connection with a close code; the first code set wins.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
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
    tx: mpsc::Sender<Outbound>,
    kick: Arc<Kick>,
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
    pub fn new(frames_max: usize) -> (Outbox, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(frames_max);
        let kick = Arc::new(Kick {
            token: CancellationToken::new(),
            code: AtomicU16::new(0),
        });
        (Outbox { tx, kick }, rx)
    }

    pub fn kick_handle(&self) -> Arc<Kick> {
        self.kick.clone()
    }

    /// Queues a private frame. Returns false if the connection is gone or was just kicked as slow.
    pub fn push(&self, kind: OutKind, frame: Frame) -> bool {
        self.send(Outbound::Frame(kind, frame))
    }

    pub fn send(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick(CloseCode::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks the connection to close with `code`. Only the first call chooses the code.
    pub fn kick(&self, code: CloseCode) {
        self.kick.kick(code);
    }

    pub fn is_kicked(&self) -> bool {
        self.kick.token.is_cancelled()
    }
}
