//! The fixed bounds of giftd that are not configuration, in one place with their units.
//!
//! Everything an operator may want to tune is in `config.rs`. What is here is either part of the
//! protocol (a client may rely on it, so it is listed in `docs/PROTOCOL.md`) or an internal
//! bound whose value follows from how giftd works rather than from a deployment.

use std::time::Duration;

// --- Protocol bounds (docs/PROTOCOL.md) ---

/// Longest client token accepted, in bytes. Real tokens are a few hundred bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Longest room id, in bytes: `[A-Za-z0-9_-]{1,64}`.
pub const ROOM_ID_BYTES_MAX: usize = 64;
/// Longest sticker id, in bytes: `[a-z0-9_-]{1,32}`.
pub const STICKER_ID_BYTES_MAX: usize = 32;
/// Longest room epoch a client may send back in `join.since`; giftd's own are 16 hex digits.
pub const EPOCH_CHARS_MAX: usize = 32;
/// Characters of an unknown message `type` echoed back in the error, so a client cannot make
/// the server reflect a large string.
pub const UNKNOWN_TYPE_CHARS_SHOWN: usize = 40;
/// Largest admin HTTP request body, in bytes.
pub const ADMIN_BODY_BYTES_MAX: usize = 4096;
/// Largest single top-up, in coins (ten million dollars at list price): far above any real store
/// purchase, far below what could overflow a balance.
pub const TOPUP_COINS_MAX: u64 = 1_000_000_000;
/// Largest spending cap per window, in coins (config or admin API): a thousand top-ups at most,
/// so caps and sums of spending stay far from overflow.
pub const SPEND_CAP_COINS_MAX: u64 = 1_000_000_000_000;

// --- Server internals ---

/// TCP connections the public listener accepts beyond `server.connections_max` (which bounds
/// WebSockets), so `/rooms`, `/stickers` and handshakes in progress still get through when
/// WebSockets are at their limit.
pub const HTTP_HEADROOM_CONNECTIONS: usize = 256;
/// Largest HTTP request head hyper buffers per connection, in bytes.
pub const HTTP_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed `accept` (typically EMFILE) before trying again, instead of spinning.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Frames a writer takes from its queues per socket write before flushing, so one busy room
/// cannot starve a connection's private replies for long.
pub const WRITE_BATCH_FRAMES_MAX: usize = 256;
/// How long a room refuses commands with `room_busy` after a member's writer last found the node
/// behind the room (`room/hub.rs`): long enough for the writers to catch up, short enough that a
/// publisher's retry after a short backoff gets through once they have.
pub const NODE_BEHIND_HOLD: Duration = Duration::from_millis(200);
/// How often a stalled write checks whether its client fell a whole ring behind.
pub const STALL_CHECK: Duration = Duration::from_millis(50);
/// What the ledger gets to finish after the shutdown grace period, at least.
pub const LEDGER_CLOSE_MIN: Duration = Duration::from_secs(2);
/// Listen backlog: a burst of thousands of connecting viewers (a popular stream starting) must
/// queue in the kernel rather than be dropped and retried after a second.
pub const LISTEN_BACKLOG: u32 = 4096;
