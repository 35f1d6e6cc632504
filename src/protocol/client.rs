//! Messages clients send. Each carries a client-chosen `id` that giftd echoes in its `ack` or
//! `error`, so clients can pipeline commands.

use serde::Deserialize;

use super::server::Board;
use crate::bounds;
use crate::error::{Error, Result};

/// One decoded client message with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Authenticate with a JWT, when the handshake carried none.
    Auth { token: String },
    /// Streamer: open a live room and enter it.
    OpenRoom { room: String, title: String },
    /// Streamer: close the room this connection opened.
    CloseRoom {},
    /// Enter a room and receive its snapshot, then its events; with `since`, the events missed
    /// after that position instead, when the room still has them.
    Join {
        room: String,
        #[serde(default)]
        since: Option<Since>,
    },
    /// Leave the current room.
    Leave {},
    /// Viewer: send a sticker to the current room's streamer. `key` is the idempotency key.
    SendGift { sticker: String, key: String },
    /// Viewer: ask a public question, optionally paid with a sticker (then `key` is required).
    Ask {
        text: String,
        #[serde(default)]
        sticker: Option<String>,
        #[serde(default)]
        key: Option<String>,
    },
    /// Streamer: answer a question in the current room.
    Answer { question_id: u64, text: String },
    /// Streamer: thank the sender of a gift in the current room.
    Thank {
        gift_id: String,
        #[serde(default)]
        text: Option<String>,
    },
    /// Drop a red packet into the current room: `total_coins` cut into `shares` shares.
    /// `key` is the idempotency key.
    DropRedPacket {
        total_coins: u64,
        shares: u64,
        key: String,
    },
    /// Grab a share of a red packet in the current room.
    GrabRedPacket { packet_id: String },
    /// Streamer: set the room's goal (ending the current one with `replaced`). Only gifts of
    /// `sticker` count if given; the goal ends `duration_ms` after it is set if given.
    SetGoal {
        target_coins: u64,
        #[serde(default)]
        sticker: Option<String>,
        #[serde(default)]
        duration_ms: Option<u64>,
    },
    /// Streamer: end the room's current goal.
    EndGoal {},
    /// The current room's leaderboard `board`: its top N and, with `around`, that user's entry
    /// with its neighbours.
    Leaderboard {
        board: Board,
        #[serde(default)]
        around: Option<String>,
    },
    /// Streamer: challenge the streamer of live room `room` to a PK battle.
    PkChallenge { room: String },
    /// Streamer: accept a challenge to the current room.
    PkAccept { battle_id: String },
    /// Streamer: decline a challenge to the current room.
    PkDecline { battle_id: String },
    /// Streamer: leave the current room's battle (the other room wins) or withdraw a challenge.
    PkLeave { battle_id: String },
    /// The caller's wallet.
    Balance {},
    /// Liveness and clock check.
    Ping {},
}

const KNOWN: &[&str] = &[
    "auth",
    "open_room",
    "close_room",
    "join",
    "leave",
    "send_gift",
    "ask",
    "answer",
    "thank",
    "set_goal",
    "end_goal",
    "leaderboard",
    "balance",
    "ping",
    "drop_red_packet",
    "grab_red_packet",
    "pk_challenge",
    "pk_accept",
    "pk_decline",
    "pk_leave",
];

/// The last event position a client saw in a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// Which rate-limit bucket a command draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClass {
    Gifts,
    Questions,
    Commands,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Auth { .. } => "auth",
            Command::OpenRoom { .. } => "open_room",
            Command::CloseRoom {} => "close_room",
            Command::Join { .. } => "join",
            Command::Leave {} => "leave",
            Command::SendGift { .. } => "send_gift",
            Command::Ask { .. } => "ask",
            Command::Answer { .. } => "answer",
            Command::DropRedPacket { .. } => "drop_red_packet",
            Command::GrabRedPacket { .. } => "grab_red_packet",
            Command::Thank { .. } => "thank",
            Command::SetGoal { .. } => "set_goal",
            Command::EndGoal {} => "end_goal",
            Command::Leaderboard { .. } => "leaderboard",
            Command::PkChallenge { .. } => "pk_challenge",
            Command::PkAccept { .. } => "pk_accept",
            Command::PkDecline { .. } => "pk_decline",
            Command::PkLeave { .. } => "pk_leave",
            Command::Balance {} => "balance",
            Command::Ping {} => "ping",
        }
    }

    /// Whether the command acts on the sender's current room, and so runs on the node that runs
    /// the room (in a cluster, possibly another node).
    pub fn acts_on_room(&self) -> bool {
        matches!(
            self,
            Command::SendGift { .. }
                | Command::Ask { .. }
                | Command::Answer { .. }
                | Command::Thank { .. }
                | Command::SetGoal { .. }
                | Command::EndGoal {}
                | Command::Leaderboard { .. }
                | Command::CloseRoom {}
                | Command::DropRedPacket { .. }
                | Command::GrabRedPacket { .. }
                | Command::PkChallenge { .. }
                | Command::PkAccept { .. }
                | Command::PkDecline { .. }
                | Command::PkLeave { .. }
        )
    }

    pub fn rate_class(&self) -> RateClass {
        match self {
            Command::SendGift { .. } | Command::DropRedPacket { .. } => RateClass::Gifts,
            Command::Ask {
                sticker: Some(_), ..
            } => RateClass::Gifts,
            Command::Ask { .. } => RateClass::Questions,
            _ => RateClass::Commands,
        }
    }
}

/// Parses the body of a message whose `type` is `kind`.
pub(super) fn parse(
    kind: &str,
    mut map: serde_json::Map<String, serde_json::Value>,
) -> Result<Command> {
    if !KNOWN.contains(&kind) {
        let shown: String = kind
            .chars()
            .take(bounds::UNKNOWN_TYPE_CHARS_SHOWN)
            .collect();
        return Err(Error::UnknownType(shown));
    }
    map.insert("type".into(), serde_json::Value::String(kind.to_owned()));
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| Error::InvalidMessage(e.to_string()))
}

/// Room ids are `[A-Za-z0-9_-]{1,64}`.
pub fn check_room_id(room: &str) -> Result<()> {
    let ok = !room.is_empty()
        && room.len() <= bounds::ROOM_ID_BYTES_MAX
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidMessage(format!(
            "room must match [A-Za-z0-9_-]{{1,{}}}",
            bounds::ROOM_ID_BYTES_MAX
        )))
    }
}

/// Checks free text: not blank, at most `limit_chars` characters, no control characters other
/// than newline.
pub fn check_text(text: &str, limit_chars: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::InvalidMessage("text must not be empty".into()));
    }
    if text.chars().count() > limit_chars {
        return Err(Error::TextTooLong { limit_chars });
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::InvalidMessage(
            "text must not contain control characters".into(),
        ));
    }
    Ok(())
}
