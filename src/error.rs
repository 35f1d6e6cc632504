//! The one error type of giftd, and its mapping to wire codes.
//!
//! Every failure a client can see is an [`Error`] variant. Each variant has a stable numeric code
//! (grouped in reserved ranges), a stable snake_case name and an HTTP status, all given by one
//! exhaustive table, [`Error::wire`]. Codes and names are part of the protocol and are listed in
//! `docs/PROTOCOL.md`; they are never reused or renumbered.
//!
//! Error codes live in 11000–19999, so they can never be mistaken for a WebSocket close code
//! (1000–4999, see [`CloseCode`]):
//!
//! | range | family |
//! |-------|--------|
//! | 11000–11999 | protocol: framing, JSON, message shape |
//! | 12000–12999 | authentication and authorization |
//! | 13000–13999 | rooms, questions and gifts as room objects |
//! | 14000–14999 | money: wallets, stickers, idempotency |
//! | 15000–15999 | limits: rate, size, capacity |
//! | 19000–19999 | server-side failures |

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("malformed JSON: {0}")]
    BadJson(String),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("binary frames are not supported; send JSON text frames")]
    BinaryFrame,
    #[error("authenticate first: send an `auth` message or pass a token in the handshake")]
    NotAuthenticated,
    #[error("this connection is already authenticated")]
    AlreadyAuthenticated,
    #[error("message exceeds {limit_bytes} bytes")]
    MessageTooLarge { limit_bytes: usize },
    #[error("no such endpoint")]
    NoSuchEndpoint,
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,

    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    TokenExpired,
    #[error("role `{have}` cannot do this; it needs `{need}`")]
    WrongRole {
        have: &'static str,
        need: &'static str,
    },
    #[error("only the room's own streamer can do this")]
    NotRoomOwner,
    #[error("this token is scoped to another room")]
    TokenRoomMismatch,
    #[error("Origin not allowed")]
    OriginNotAllowed,
    #[error("the demo's development tools are off; set demo.dev_tools = true to use them")]
    DevToolsDisabled,
    #[error("the demo's development tools answer only connections from a loopback address")]
    LoopbackOnly,

    #[error("room `{0}` not found")]
    RoomNotFound(String),
    #[error("room `{0}` is already live")]
    RoomExists(String),
    #[error("join a room first")]
    NotInRoom,
    #[error("already in room `{0}`; leave it first")]
    AlreadyInRoom(String),
    #[error("question {0} not found")]
    QuestionNotFound(u64),
    #[error("gift `{0}` not found in this room's recent gifts")]
    GiftNotFound(String),
    #[error("a streamer cannot send gifts to their own room")]
    SelfGift,
    #[error("red packet `{0}` not found in this room")]
    PacketNotFound(String),
    #[error("all shares of this red packet are taken")]
    PacketEmpty,
    #[error("this red packet expired")]
    PacketExpired,
    #[error("the room has no goal")]
    GoalNotFound,
    #[error("room `{0}` is already in a PK battle or has an open challenge")]
    PkBusy(String),
    #[error("PK battle `{0}` is not open for this room")]
    PkNotFound(String),

    #[error("insufficient funds: balance {balance_coins} coins, price {price_coins} coins")]
    InsufficientFunds {
        balance_coins: u64,
        price_coins: u64,
    },
    #[error("unknown sticker `{0}`")]
    UnknownSticker(String),
    #[error("idempotency key `{0}` was already used with a different payload")]
    IdempotencyConflict(String),
    #[error("invalid amount: {0}")]
    InvalidAmount(String),
    #[error("spending cap reached: {remaining_coins} of {cap_coins} coins left in the current window, price {price_coins} coins")]
    SpendingCapExceeded {
        cap_coins: u64,
        remaining_coins: u64,
        price_coins: u64,
    },
    #[error("no top-up with purchase id `{0}`")]
    PurchaseNotFound(String),

    #[error("rate limit exceeded for {0}; retry later")]
    RateLimited(&'static str),
    #[error("text exceeds {limit_chars} characters")]
    TextTooLong { limit_chars: usize },
    #[error("server is at its connection limit")]
    TooManyConnections,
    #[error("room is full")]
    RoomFull,
    #[error("this node is at its limit of live rooms")]
    TooManyRooms,
    #[error("the room is busy; retry shortly (nothing was charged)")]
    RoomBusy,

    #[error("internal error")]
    Internal(String),
    #[error("ledger unavailable: {0}")]
    LedgerUnavailable(String),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("the node that runs this room cannot be reached: {0}")]
    RoomUnavailable(String),
}

/// An error's place on the wire: its stable code and name, and the HTTP status it gets when it
/// answers an HTTP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    pub code: u16,
    pub reason: &'static str,
    pub http_status: u16,
}

const fn wire(code: u16, reason: &'static str, http_status: u16) -> Wire {
    Wire {
        code,
        reason,
        http_status,
    }
}

impl Error {
    /// The one table of wire codes, names and HTTP statuses. Exhaustive on purpose: a new variant
    /// does not compile until it is given all three.
    pub fn wire(&self) -> Wire {
        match self {
            Error::BadJson(_) => wire(11001, "bad_json", 400),
            Error::UnknownType(_) => wire(11002, "unknown_type", 400),
            Error::InvalidMessage(_) => wire(11003, "invalid_message", 400),
            Error::BinaryFrame => wire(11004, "binary_frame", 400),
            Error::NotAuthenticated => wire(11005, "not_authenticated", 401),
            Error::AlreadyAuthenticated => wire(11006, "already_authenticated", 400),
            Error::MessageTooLarge { .. } => wire(11007, "message_too_large", 413),
            Error::NoSuchEndpoint => wire(11008, "no_such_endpoint", 404),
            Error::MethodNotAllowed => wire(11009, "method_not_allowed", 405),
            Error::InvalidToken(_) => wire(12001, "invalid_token", 401),
            Error::TokenExpired => wire(12002, "token_expired", 401),
            Error::WrongRole { .. } => wire(12003, "wrong_role", 403),
            Error::NotRoomOwner => wire(12004, "not_room_owner", 403),
            Error::TokenRoomMismatch => wire(12005, "token_room_mismatch", 403),
            Error::OriginNotAllowed => wire(12006, "origin_not_allowed", 403),
            Error::DevToolsDisabled => wire(12007, "dev_tools_disabled", 403),
            Error::LoopbackOnly => wire(12008, "loopback_only", 403),
            Error::RoomNotFound(_) => wire(13001, "room_not_found", 404),
            Error::RoomExists(_) => wire(13002, "room_exists", 409),
            Error::NotInRoom => wire(13003, "not_in_room", 409),
            Error::AlreadyInRoom(_) => wire(13004, "already_in_room", 409),
            Error::QuestionNotFound(_) => wire(13005, "question_not_found", 404),
            Error::GiftNotFound(_) => wire(13006, "gift_not_found", 404),
            Error::SelfGift => wire(13007, "self_gift", 403),
            Error::PacketNotFound(_) => wire(13008, "red_packet_not_found", 404),
            Error::PacketEmpty => wire(13009, "red_packet_empty", 409),
            Error::PacketExpired => wire(13010, "red_packet_expired", 409),
            Error::GoalNotFound => wire(13011, "goal_not_found", 404),
            Error::PkBusy(_) => wire(13012, "pk_busy", 409),
            Error::PkNotFound(_) => wire(13013, "pk_not_found", 404),
            Error::InsufficientFunds { .. } => wire(14001, "insufficient_funds", 402),
            Error::UnknownSticker(_) => wire(14002, "unknown_sticker", 404),
            Error::IdempotencyConflict(_) => wire(14003, "idempotency_conflict", 409),
            Error::InvalidAmount(_) => wire(14004, "invalid_amount", 400),
            Error::SpendingCapExceeded { .. } => wire(14005, "spending_cap_exceeded", 402),
            Error::PurchaseNotFound(_) => wire(14006, "purchase_not_found", 404),
            Error::RateLimited(_) => wire(15001, "rate_limited", 429),
            Error::TextTooLong { .. } => wire(15002, "text_too_long", 400),
            Error::TooManyConnections => wire(15003, "too_many_connections", 503),
            Error::RoomFull => wire(15004, "room_full", 503),
            Error::TooManyRooms => wire(15005, "too_many_rooms", 503),
            Error::RoomBusy => wire(15006, "room_busy", 503),
            Error::Internal(_) => wire(19001, "internal", 500),
            Error::LedgerUnavailable(_) => wire(19002, "ledger_unavailable", 503),
            Error::ShuttingDown => wire(19003, "shutting_down", 503),
            Error::RoomUnavailable(_) => wire(19004, "room_unavailable", 503),
        }
    }

    /// The stable numeric wire code.
    pub fn code(&self) -> u16 {
        self.wire().code
    }

    /// The stable snake_case name that goes with [`Error::code`].
    pub fn reason(&self) -> &'static str {
        self.wire().reason
    }

    /// The HTTP status of this error when it answers an HTTP request.
    pub fn http_status(&self) -> u16 {
        self.wire().http_status
    }

    /// The text shown to clients. Internal details stay in the logs.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error".to_owned(),
            Error::LedgerUnavailable(_) => "ledger unavailable; nothing was charged".to_owned(),
            other => other.to_string(),
        }
    }

    /// The JSON body of this error, the same on WebSocket (plus `type` and `id`) and HTTP.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "code": self.code(), "reason": self.reason(), "message": self.client_message() });
        if let Some(remaining) = self.remaining_coins() {
            body["remaining_coins"] = remaining.into();
        }
        body
    }

    /// For a refusal by a spending cap: the coins the user may still spend in the window, which
    /// the error carries as a field of its own so clients need not parse the message.
    pub fn remaining_coins(&self) -> Option<u64> {
        match self {
            Error::SpendingCapExceeded {
                remaining_coins, ..
            } => Some(*remaining_coins),
            _ => None,
        }
    }

    /// Whether a connection that caused this error should count it as misbehaviour. Repeated
    /// misbehaviour closes the connection; honest failures (a closed room, low funds) never do.
    pub fn is_protocol_violation(&self) -> bool {
        (11000..12000).contains(&self.code())
    }
}

/// WebSocket close codes giftd sends, and what a client should do about each.
///
/// The application codes follow the range rule clients rely on: 4000–4499 mean "reconnect (with
/// backoff) and re-join", 4500–4999 mean "do not reconnect until something is fixed" (a new token,
/// a client bug). The RFC 6455 codes below 4000 keep their standard meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The client asked to close.
    Normal,
    /// The server is shutting down.
    GoingAway,
    /// A text frame was not valid UTF-8.
    InvalidPayload,
    /// Abusive or malformed traffic at the WebSocket level.
    PolicyViolation,
    /// A message over `message_bytes_max`.
    TooBig,
    /// An unexpected server fault.
    InternalError,
    /// The client could not keep up with its room; it fell more than the queue bound behind.
    SlowConsumer,
    /// No valid `auth` arrived within `handshake_timeout_ms`.
    AuthTimeout,
    /// This node lost events of the client's room on their way from the node that runs it; the
    /// client re-joins with its last position and recovers them.
    Resync,
    /// Authentication failed (bad, expired or forged token).
    AuthFailed,
    /// The client kept sending invalid commands.
    TooManyErrors,
}

impl CloseCode {
    /// The one table of close codes and their reason strings.
    fn wire(self) -> (u16, &'static str) {
        match self {
            CloseCode::Normal => (1000, "normal"),
            CloseCode::GoingAway => (1001, "going_away"),
            CloseCode::InvalidPayload => (1007, "invalid_payload"),
            CloseCode::PolicyViolation => (1008, "policy_violation"),
            CloseCode::TooBig => (1009, "too_big"),
            CloseCode::InternalError => (1011, "internal_error"),
            CloseCode::SlowConsumer => (4000, "slow"),
            CloseCode::AuthTimeout => (4001, "auth_timeout"),
            CloseCode::Resync => (4002, "resync"),
            CloseCode::AuthFailed => (4502, "auth_failed"),
            CloseCode::TooManyErrors => (4503, "too_many_errors"),
        }
    }

    pub fn code(self) -> u16 {
        self.wire().0
    }

    pub fn reason(self) -> &'static str {
        self.wire().1
    }

    /// Whether a client should reconnect and re-join after this close. Normal closes, protocol
    /// violations and the 4500–4999 range are final: reconnecting unchanged would fail again.
    pub fn reconnect(self) -> bool {
        matches!(self.code(), 1001 | 1011 | 4000..=4499)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One error of every variant. The `match` in `variant_index` does not compile without a new
    /// variant, and `one_of_each_variant` fails until the variant is listed here.
    pub(crate) fn one_of_each() -> Vec<Error> {
        vec![
            Error::BadJson("x".into()),
            Error::UnknownType("x".into()),
            Error::InvalidMessage("x".into()),
            Error::BinaryFrame,
            Error::NotAuthenticated,
            Error::AlreadyAuthenticated,
            Error::MessageTooLarge { limit_bytes: 1 },
            Error::InvalidToken("x".into()),
            Error::TokenExpired,
            Error::WrongRole {
                have: "viewer",
                need: "streamer",
            },
            Error::NotRoomOwner,
            Error::TokenRoomMismatch,
            Error::OriginNotAllowed,
            Error::DevToolsDisabled,
            Error::LoopbackOnly,
            Error::NoSuchEndpoint,
            Error::MethodNotAllowed,
            Error::RoomNotFound("r".into()),
            Error::RoomExists("r".into()),
            Error::NotInRoom,
            Error::AlreadyInRoom("r".into()),
            Error::QuestionNotFound(1),
            Error::GiftNotFound("g".into()),
            Error::SelfGift,
            Error::InsufficientFunds {
                balance_coins: 0,
                price_coins: 1,
            },
            Error::UnknownSticker("s".into()),
            Error::IdempotencyConflict("k".into()),
            Error::InvalidAmount("x".into()),
            Error::SpendingCapExceeded {
                cap_coins: 10,
                remaining_coins: 0,
                price_coins: 1,
            },
            Error::PurchaseNotFound("p".into()),
            Error::PacketNotFound("p".into()),
            Error::PacketEmpty,
            Error::PacketExpired,
            Error::RateLimited("gifts"),
            Error::TextTooLong { limit_chars: 1 },
            Error::TooManyConnections,
            Error::RoomFull,
            Error::TooManyRooms,
            Error::RoomBusy,
            Error::Internal("x".into()),
            Error::LedgerUnavailable("x".into()),
            Error::ShuttingDown,
            Error::RoomUnavailable("x".into()),
            Error::GoalNotFound,
            Error::PkBusy("r".into()),
            Error::PkNotFound("k".into()),
        ]
    }

    fn variant_index(e: &Error) -> usize {
        match e {
            Error::BadJson(_) => 0,
            Error::UnknownType(_) => 1,
            Error::InvalidMessage(_) => 2,
            Error::BinaryFrame => 3,
            Error::NotAuthenticated => 4,
            Error::AlreadyAuthenticated => 5,
            Error::MessageTooLarge { .. } => 6,
            Error::InvalidToken(_) => 7,
            Error::TokenExpired => 8,
            Error::WrongRole { .. } => 9,
            Error::NotRoomOwner => 10,
            Error::TokenRoomMismatch => 11,
            Error::OriginNotAllowed => 12,
            Error::RoomNotFound(_) => 13,
            Error::RoomExists(_) => 14,
            Error::NotInRoom => 15,
            Error::AlreadyInRoom(_) => 16,
            Error::QuestionNotFound(_) => 17,
            Error::GiftNotFound(_) => 18,
            Error::SelfGift => 19,
            Error::InsufficientFunds { .. } => 20,
            Error::UnknownSticker(_) => 21,
            Error::IdempotencyConflict(_) => 22,
            Error::InvalidAmount(_) => 23,
            Error::RateLimited(_) => 24,
            Error::TextTooLong { .. } => 25,
            Error::TooManyConnections => 26,
            Error::RoomFull => 27,
            Error::TooManyRooms => 28,
            Error::Internal(_) => 29,
            Error::LedgerUnavailable(_) => 30,
            Error::ShuttingDown => 31,
            Error::RoomBusy => 32,
            Error::RoomUnavailable(_) => 33,
            Error::DevToolsDisabled => 34,
            Error::LoopbackOnly => 35,
            Error::NoSuchEndpoint => 36,
            Error::MethodNotAllowed => 37,
            Error::SpendingCapExceeded { .. } => 38,
            Error::PurchaseNotFound(_) => 39,
            Error::PacketNotFound(_) => 40,
            Error::PacketEmpty => 41,
            Error::PacketExpired => 42,
            Error::GoalNotFound => 43,
            Error::PkBusy(_) => 44,
            Error::PkNotFound(_) => 45,
        }
    }

    pub(crate) const ALL_CLOSE_CODES: [CloseCode; 11] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::InternalError,
        CloseCode::SlowConsumer,
        CloseCode::AuthTimeout,
        CloseCode::Resync,
        CloseCode::AuthFailed,
        CloseCode::TooManyErrors,
    ];

    #[test]
    fn one_of_each_variant() {
        let mut seen: Vec<usize> = one_of_each().iter().map(variant_index).collect();
        seen.sort();
        assert_eq!(seen, (0..46).collect::<Vec<_>>());
    }

    #[test]
    fn codes_and_reasons_are_unique_and_in_their_ranges() {
        let all = one_of_each();
        let mut codes: Vec<u16> = all.iter().map(Error::code).collect();
        let mut reasons: Vec<&str> = all.iter().map(Error::reason).collect();
        codes.sort();
        codes.dedup();
        reasons.sort();
        reasons.dedup();
        assert_eq!(codes.len(), all.len(), "an error code is used twice");
        assert_eq!(reasons.len(), all.len(), "an error reason is used twice");
        for e in &all {
            let family = e.code() / 1000;
            assert!(
                matches!(family, 11..=15 | 19),
                "{e:?} has code {}",
                e.code()
            );
            assert!((400..600).contains(&e.http_status()), "{e:?}");
        }
        assert_eq!(Error::TokenExpired.code() / 1000, 12);
        assert_eq!(Error::NotInRoom.code() / 1000, 13);
        assert_eq!(Error::RateLimited("gifts").code() / 1000, 15);
        assert!(Error::BadJson("x".into()).is_protocol_violation());
        assert!(!Error::RoomNotFound("r".into()).is_protocol_violation());
    }

    #[test]
    fn error_codes_and_close_codes_never_share_a_number() {
        for close in ALL_CLOSE_CODES {
            // Every close code giftd sends is in the WebSocket close code space.
            assert!((1000..5000).contains(&close.code()), "{close}");
            for e in one_of_each() {
                assert_ne!(e.code(), close.code(), "{e:?} and {close}");
            }
        }
        let mut codes: Vec<u16> = ALL_CLOSE_CODES.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ALL_CLOSE_CODES.len());
    }

    #[test]
    fn close_code_ranges_say_whether_to_reconnect() {
        for close in ALL_CLOSE_CODES {
            if (4000..4500).contains(&close.code()) {
                assert!(close.reconnect(), "{close}");
            }
            if (4500..5000).contains(&close.code()) {
                assert!(!close.reconnect(), "{close}");
            }
        }
        assert!(CloseCode::SlowConsumer.reconnect());
        assert!(CloseCode::GoingAway.reconnect());
        assert!(!CloseCode::AuthFailed.reconnect());
        assert!(!CloseCode::TooManyErrors.reconnect());
    }

    #[test]
    fn internal_details_do_not_leak() {
        let e = Error::Internal("disk /var/lib/secret failed".into());
        assert!(!e.client_message().contains("secret"));
        assert!(!e.body().to_string().contains("secret"));
    }
}
