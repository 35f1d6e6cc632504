//! The one error type of giftd, and its mapping to wire codes.
//!
//! Every failure a client can see is an [`Error`] variant. Each variant has a stable numeric code
//! (grouped in reserved ranges) and a stable snake_case name; both are part of the protocol and are
//! listed in `docs/PROTOCOL.md`. Codes are never reused or renumbered.
//!
//! | range | family |
//! |-------|--------|
//! | 1000–1999 | protocol: framing, JSON, message shape |
//! | 2000–2999 | authentication and authorization |
//! | 3000–3999 | rooms, questions and gifts as room objects |
//! | 4000–4999 | money: wallets, stickers, idempotency |
//! | 5000–5999 | limits: rate, size, capacity |
//! | 9000–9999 | server-side failures |

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

    #[error("rate limit exceeded for {0}; retry later")]
    RateLimited(&'static str),
    #[error("text exceeds {limit_chars} characters")]
    TextTooLong { limit_chars: usize },
    #[error("server is at its connection limit")]
    TooManyConnections,
    #[error("room is full")]
    RoomFull,

    #[error("internal error")]
    Internal(String),
    #[error("ledger unavailable: {0}")]
    LedgerUnavailable(String),
    #[error("server is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The stable numeric wire code.
    pub fn code(&self) -> u16 {
        match self {
            Error::BadJson(_) => 1001,
            Error::UnknownType(_) => 1002,
            Error::InvalidMessage(_) => 1003,
            Error::BinaryFrame => 1004,
            Error::NotAuthenticated => 1005,
            Error::AlreadyAuthenticated => 1006,
            Error::MessageTooLarge { .. } => 1007,
            Error::InvalidToken(_) => 2001,
            Error::TokenExpired => 2002,
            Error::WrongRole { .. } => 2003,
            Error::NotRoomOwner => 2004,
            Error::TokenRoomMismatch => 2005,
            Error::OriginNotAllowed => 2006,
            Error::RoomNotFound(_) => 3001,
            Error::RoomExists(_) => 3002,
            Error::NotInRoom => 3003,
            Error::AlreadyInRoom(_) => 3004,
            Error::QuestionNotFound(_) => 3005,
            Error::GiftNotFound(_) => 3006,
            Error::SelfGift => 3007,
            Error::InsufficientFunds { .. } => 4001,
            Error::UnknownSticker(_) => 4002,
            Error::IdempotencyConflict(_) => 4003,
            Error::InvalidAmount(_) => 4004,
            Error::RateLimited(_) => 5001,
            Error::TextTooLong { .. } => 5002,
            Error::TooManyConnections => 5003,
            Error::RoomFull => 5004,
            Error::Internal(_) => 9001,
            Error::LedgerUnavailable(_) => 9002,
            Error::ShuttingDown => 9003,
        }
    }

    /// The stable snake_case name that goes with [`Error::code`].
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadJson(_) => "bad_json",
            Error::UnknownType(_) => "unknown_type",
            Error::InvalidMessage(_) => "invalid_message",
            Error::BinaryFrame => "binary_frame",
            Error::NotAuthenticated => "not_authenticated",
            Error::AlreadyAuthenticated => "already_authenticated",
            Error::MessageTooLarge { .. } => "message_too_large",
            Error::InvalidToken(_) => "invalid_token",
            Error::TokenExpired => "token_expired",
            Error::WrongRole { .. } => "wrong_role",
            Error::NotRoomOwner => "not_room_owner",
            Error::TokenRoomMismatch => "token_room_mismatch",
            Error::OriginNotAllowed => "origin_not_allowed",
            Error::RoomNotFound(_) => "room_not_found",
            Error::RoomExists(_) => "room_exists",
            Error::NotInRoom => "not_in_room",
            Error::AlreadyInRoom(_) => "already_in_room",
            Error::QuestionNotFound(_) => "question_not_found",
            Error::GiftNotFound(_) => "gift_not_found",
            Error::SelfGift => "self_gift",
            Error::InsufficientFunds { .. } => "insufficient_funds",
            Error::UnknownSticker(_) => "unknown_sticker",
            Error::IdempotencyConflict(_) => "idempotency_conflict",
            Error::InvalidAmount(_) => "invalid_amount",
            Error::RateLimited(_) => "rate_limited",
            Error::TextTooLong { .. } => "text_too_long",
            Error::TooManyConnections => "too_many_connections",
            Error::RoomFull => "room_full",
            Error::Internal(_) => "internal",
            Error::LedgerUnavailable(_) => "ledger_unavailable",
            Error::ShuttingDown => "shutting_down",
        }
    }

    /// The text shown to clients. Internal details stay in the logs.
    pub fn client_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error".to_owned(),
            Error::LedgerUnavailable(_) => "ledger unavailable; nothing was charged".to_owned(),
            other => other.to_string(),
        }
    }

    /// Whether a connection that caused this error should count it as misbehaviour. Repeated
    /// misbehaviour closes the connection; honest failures (a closed room, low funds) never do.
    pub fn is_protocol_violation(&self) -> bool {
        (1000..2000).contains(&self.code())
    }
}

/// WebSocket close codes giftd sends. The 4000–4999 range is reserved by RFC 6455 for
/// applications.
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
    /// Authentication failed (bad, expired or forged token).
    AuthFailed,
    /// The client kept sending invalid commands.
    TooManyErrors,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::SlowConsumer => 4000,
            CloseCode::AuthTimeout => 4001,
            CloseCode::AuthFailed => 4002,
            CloseCode::TooManyErrors => 4003,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::TooBig => "too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::SlowConsumer => "slow",
            CloseCode::AuthTimeout => "auth_timeout",
            CloseCode::AuthFailed => "auth_failed",
            CloseCode::TooManyErrors => "too_many_errors",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_sit_in_their_ranges() {
        assert_eq!(Error::BadJson("x".into()).code() / 1000, 1);
        assert_eq!(Error::TokenExpired.code() / 1000, 2);
        assert_eq!(Error::NotInRoom.code() / 1000, 3);
        assert_eq!(
            Error::InsufficientFunds {
                balance_coins: 0,
                price_coins: 1
            }
            .code()
                / 1000,
            4
        );
        assert_eq!(Error::RateLimited("gifts").code() / 1000, 5);
        assert_eq!(Error::Internal("x".into()).code() / 1000, 9);
        assert!(Error::BadJson("x".into()).is_protocol_violation());
        assert!(!Error::RoomNotFound("r".into()).is_protocol_violation());
    }

    #[test]
    fn internal_details_do_not_leak() {
        let e = Error::Internal("disk /var/lib/secret failed".into());
        assert!(!e.client_message().contains("secret"));
    }
}
