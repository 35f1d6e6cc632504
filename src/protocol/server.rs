//! Messages giftd sends: replies and private notices to one client (`ack`, `error`, `welcome`,
//! `thanks`, `answered`, `gift_received`, `refund`, `red_packet_summary`)
//! and room events (`event`), which carry the room's sequence number.
//!
//! Every message is encoded exactly once into a [`Frame`]. For room events that single frame is
//! what every member receives.

use serde::{Deserialize, Serialize};

use super::Frame;
use crate::auth::Role;
use crate::error::Error;
use crate::ledger::pk::PkBattle;
use crate::ledger::GiftReceipt;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// Sent once when the handshake carried a valid token.
    Welcome {
        user: &'a str,
        role: Role,
        server_time_ms: u64,
    },
    /// The failure of the client message with the same `id` (absent if the id was unreadable).
    Error {
        id: Option<u64>,
        code: u16,
        reason: &'static str,
        message: String,
        /// Only on `spending_cap_exceeded`: what the user may still spend in the window.
        #[serde(skip_serializing_if = "Option::is_none")]
        remaining_coins: Option<u64>,
    },
    /// Private: the streamer thanked your gift.
    Thanks {
        room: &'a str,
        gift_id: &'a str,
        from: &'a str,
        text: &'a str,
    },
    /// Private: a top-up of yours was reversed (the store refunded it or a chargeback arrived).
    Refund {
        purchase_id: &'a str,
        reason: crate::ledger::RefundReason,
        channel: crate::gift::Channel,
        coins: u64,
        wallet_coins: u64,
        debt_coins: u64,
        balance_coins: u64,
        owed_coins: u64,
    },
    /// Private, to a red packet's sender when it ends: who grabbed how much, what came back.
    RedPacketSummary(&'a crate::ledger::PacketEnd),
    /// Private: the streamer answered your question.
    Answered {
        room: &'a str,
        question_id: u64,
        text: &'a str,
    },
    /// Private, to the streamer: a gift was committed in your room, with its exact split. The
    /// room's `gift` event leaves the split out, because it depends on which app store the
    /// sender's coins came from.
    GiftReceived {
        room: &'a str,
        gift_id: &'a str,
        from: &'a str,
        sticker: &'a str,
        price_coins: u64,
        store_coins: u64,
        streamer_coins: u64,
        platform_coins: u64,
        /// The gift's room event, absent if the room closed before it was published.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

/// Encodes any server message once.
pub fn encode<T: Serialize>(msg: &T) -> Frame {
    // Serializing plain structs of strings and integers cannot fail.
    Frame::from(serde_json::to_string(msg).expect("server messages always serialize"))
}

/// The result of the client message with the same `id`: `{"type":"ack","id":..,"result":..}`.
#[derive(Debug, Serialize)]
struct Ack<'a, T> {
    #[serde(rename = "type")]
    message_type: &'static str,
    id: u64,
    result: &'a T,
}

pub fn ack<T: Serialize>(id: u64, result: &T) -> Frame {
    encode(&Ack {
        message_type: "ack",
        id,
        result,
    })
}

pub fn error(id: Option<u64>, e: &Error) -> Frame {
    encode(&ServerMessage::Error {
        id,
        code: e.code(),
        reason: e.reason(),
        message: e.client_message(),
        remaining_coins: e.remaining_coins(),
    })
}

/// A room event as sent: `{"type":"event","room":..,"seq":..,"kind":..,...}`.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    #[serde(rename = "type")]
    pub message_type: &'static str,
    pub room: &'a str,
    /// The room's incarnation; with `seq`, the event's position.
    pub epoch: &'a str,
    pub seq: u64,
    #[serde(flatten)]
    pub kind: &'a EventKind,
}

impl Event<'_> {
    pub fn encode(room: &str, epoch: &str, seq: u64, kind: &EventKind) -> Frame {
        encode(&Event {
            message_type: "event",
            room,
            epoch,
            seq,
            kind,
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The number of viewers, published at most once per `viewer_count_interval_ms`.
    Viewers {
        count: u64,
    },
    Gift {
        gift_id: String,
        from: String,
        sticker: String,
        sticker_name: String,
        price_coins: u64,
        /// The combo this gift continues: present on the 2nd and later gifts of a combo.
        #[serde(skip_serializing_if = "Option::is_none")]
        combo: Option<ComboView>,
    },
    Question(QuestionView),
    Answer {
        question_id: u64,
        asker: String,
        text: String,
    },
    Thanks {
        gift_id: String,
        to: String,
        text: String,
    },
    /// The room closed; members are out of it and may join another.
    RoomClosed {
        reason: String,
    },
    /// A red packet was dropped into the room.
    RedPacket {
        packet_id: String,
        from: String,
        total_coins: u64,
        shares: u64,
        expires_ms: u64,
    },
    /// A member grabbed a share of a red packet.
    RedPacketGrab {
        packet_id: String,
        user: String,
        coins: u64,
        grabbed_shares: u64,
        shares: u64,
    },
    /// A red packet ended: all shares taken, or it expired and the rest went back.
    RedPacketEnd {
        packet_id: String,
        reason: crate::ledger::PacketEndReason,
        grabbed_shares: u64,
        grabbed_coins: u64,
        returned_coins: u64,
    },
    /// A combo (two or more gifts of one sticker from one sender) ended; see `room/combo.rs`.
    ComboEnd {
        from: String,
        sticker: String,
        count: u32,
        total_coins: u64,
    },
    /// The streamer set a goal (ending the previous one with `replaced`).
    GoalSet {
        goal: GoalView,
    },
    /// The goal's progress changed; coalesced, at most once per `viewer_count_interval_ms`.
    GoalProgress {
        goal: GoalView,
    },
    /// The goal's progress reached its target; exactly once per goal.
    GoalReached {
        goal: GoalView,
    },
    /// The goal ended: `deadline`, `ended` (by the streamer), `replaced` or `room_closed`.
    GoalEnded {
        goal: GoalView,
        reason: String,
    },
    /// A leaderboard's top N changed; coalesced, at most once per `viewer_count_interval_ms`.
    Leaderboard {
        board: Board,
        top: Vec<Ranked>,
    },
    /// A streamer challenged another room to a PK battle (`room/pk.rs`); both rooms see it.
    PkInvite {
        battle: Box<PkBattle>,
    },
    /// The challenge was accepted: the battle runs for `remaining_ms` more, to `battle.ends_ms`.
    PkStarted {
        battle: Box<PkBattle>,
        remaining_ms: u64,
    },
    /// The battle's scores changed; coalesced, at most once per `viewer_count_interval_ms`.
    PkScore {
        battle: Box<PkBattle>,
        remaining_ms: u64,
    },
    /// The battle or the challenge ended (`battle.reason`, `battle.winner`); once per room.
    PkEnded {
        battle: Box<PkBattle>,
    },
}

/// A gift's place in its combo.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComboView {
    /// Gifts in the combo so far, this one included (2 or more).
    pub count: u32,
    /// Their coins, this one included.
    pub total_coins: u64,
}

/// A leaderboard (`room/leaderboard.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Board {
    Session,
    Window,
    AllTime,
}

impl Board {
    pub const ALL: [Board; 3] = [Board::Session, Board::Window, Board::AllTime];

    pub fn as_str(self) -> &'static str {
        match self {
            Board::Session => "session",
            Board::Window => "window",
            Board::AllTime => "all_time",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Board::Session => 0,
            Board::Window => 1,
            Board::AllTime => 2,
        }
    }
}

/// A gifter's place on a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    /// 1 for the top gifter; ranks are distinct (ties are broken by user id).
    pub rank: u64,
    pub user: String,
    pub coins: u64,
}

/// The three boards' top N, as the join snapshot shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardsView {
    pub session: Vec<Ranked>,
    pub window: Vec<Ranked>,
    pub all_time: Vec<Ranked>,
}

/// A room goal as its events and the snapshot show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GoalView {
    /// The `seq` of the goal's `goal_set` event: unique within the room's epoch.
    pub goal_id: u64,
    pub target_coins: u64,
    /// Present when only gifts of this sticker count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticker: Option<String>,
    /// Unix time in ms at which the goal ends, if it has a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Coins of the committed gifts that count, since the goal was set.
    pub progress_coins: u64,
    pub reached: bool,
}

impl EventKind {
    /// Every kind's name, in [`EventKind::index`] order.
    pub const NAMES: [&'static str; 19] = [
        "viewers",
        "gift",
        "question",
        "answer",
        "thanks",
        "room_closed",
        "red_packet",
        "red_packet_grab",
        "red_packet_end",
        "combo_end",
        "goal_set",
        "goal_progress",
        "goal_reached",
        "goal_ended",
        "leaderboard",
        "pk_invite",
        "pk_started",
        "pk_score",
        "pk_ended",
    ];

    /// A dense index, for per-kind counters resolved once.
    pub fn index(&self) -> usize {
        match self {
            EventKind::Viewers { .. } => 0,
            EventKind::Gift { .. } => 1,
            EventKind::Question(_) => 2,
            EventKind::Answer { .. } => 3,
            EventKind::Thanks { .. } => 4,
            EventKind::RoomClosed { .. } => 5,
            EventKind::RedPacket { .. } => 6,
            EventKind::RedPacketGrab { .. } => 7,
            EventKind::RedPacketEnd { .. } => 8,
            EventKind::ComboEnd { .. } => 9,
            EventKind::GoalSet { .. } => 10,
            EventKind::GoalProgress { .. } => 11,
            EventKind::GoalReached { .. } => 12,
            EventKind::GoalEnded { .. } => 13,
            EventKind::Leaderboard { .. } => 14,
            EventKind::PkInvite { .. } => 15,
            EventKind::PkStarted { .. } => 16,
            EventKind::PkScore { .. } => 17,
            EventKind::PkEnded { .. } => 18,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Viewers { .. } => "viewers",
            EventKind::Gift { .. } => "gift",
            EventKind::Question(_) => "question",
            EventKind::Answer { .. } => "answer",
            EventKind::Thanks { .. } => "thanks",
            EventKind::RoomClosed { .. } => "room_closed",
            EventKind::RedPacket { .. } => "red_packet",
            EventKind::RedPacketGrab { .. } => "red_packet_grab",
            EventKind::RedPacketEnd { .. } => "red_packet_end",
            EventKind::ComboEnd { .. } => "combo_end",
            EventKind::GoalSet { .. } => "goal_set",
            EventKind::GoalProgress { .. } => "goal_progress",
            EventKind::GoalReached { .. } => "goal_reached",
            EventKind::GoalEnded { .. } => "goal_ended",
            EventKind::Leaderboard { .. } => "leaderboard",
            EventKind::PkInvite { .. } => "pk_invite",
            EventKind::PkStarted { .. } => "pk_started",
            EventKind::PkScore { .. } => "pk_score",
            EventKind::PkEnded { .. } => "pk_ended",
        }
    }
}

/// A question as rooms and snapshots show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuestionView {
    pub question_id: u64,
    pub from: String,
    pub text: String,
    pub created_ms: u64,
    /// Present for paid questions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid: Option<PaidView>,
    /// Present while a paid question is pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_until_ms: Option<u64>,
    pub answered: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PaidView {
    pub gift_id: String,
    pub sticker: String,
    pub price_coins: u64,
}

/// What a member sees on entering a room.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub room: String,
    pub title: String,
    pub streamer: String,
    pub viewers: u64,
    /// Distinct viewer users (a user on several devices counts once; in a cluster, once per
    /// node they watch on).
    pub users: u64,
    /// The room's incarnation: a new room (or one reopened) has a new epoch and numbers its events
    /// from 1 again.
    pub epoch: String,
    /// The last event sequence number included in this snapshot; events follow from `seq + 1`.
    pub seq: u64,
    /// Present when the join asked to recover (`since`): always `false` here, since a snapshot is
    /// what a client gets when its missed events could not be recovered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    pub questions_open: Vec<QuestionView>,
    pub questions_pinned: Vec<QuestionView>,
    /// The room's current goal, absent when there is none. Boxed: most rooms have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<Box<GoalView>>,
    /// The room's PK battle or open challenge (`room/pk.rs`), absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pk: Option<Box<PkBattle>>,
    /// The room's leaderboards' top N (`room/leaderboard.rs`). Boxed: it keeps a snapshot small
    /// to move.
    pub leaderboards: Box<BoardsView>,
}

/// The ack of a `join` whose missed events are replayed: the client keeps its own state and
/// receives every event after `seq`, in order, right after this ack.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Recovered {
    pub room: String,
    pub title: String,
    pub streamer: String,
    pub epoch: String,
    /// The position the client gave; the first replayed event is `seq + 1`.
    pub seq: u64,
    pub recovered: bool,
}

/// The receipt acknowledging a gift, sent only after the ledger committed it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReceiptView<'a> {
    pub gift_id: &'a str,
    pub room: &'a str,
    pub sticker: &'a str,
    pub price_coins: u64,
    pub store_coins: u64,
    pub streamer_coins: u64,
    pub platform_coins: u64,
    pub funding: FundingView,
    pub balance_coins: u64,
    pub seq: Option<u64>,
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct FundingView {
    pub ios_coins: u64,
    pub android_coins: u64,
    pub web_coins: u64,
}

impl<'a> ReceiptView<'a> {
    pub fn new(r: &'a GiftReceipt, replayed: bool) -> Self {
        ReceiptView {
            gift_id: &r.gift_id,
            room: &r.room,
            sticker: &r.sticker,
            price_coins: r.price_coins,
            store_coins: r.store_coins,
            streamer_coins: r.streamer_coins,
            platform_coins: r.platform_coins,
            funding: FundingView {
                ios_coins: r.funding_coins[0],
                android_coins: r.funding_coins[1],
                web_coins: r.funding_coins[2],
            },
            balance_coins: r.balance_coins,
            seq: r.seq,
            replayed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal() -> GoalView {
        GoalView {
            goal_id: 1,
            target_coins: 1,
            sticker: None,
            deadline_ms: None,
            progress_coins: 0,
            reached: false,
        }
    }

    #[test]
    fn kind_names_follow_their_index() {
        let kinds = [
            EventKind::Viewers { count: 0 },
            EventKind::Gift {
                gift_id: String::new(),
                from: String::new(),
                sticker: String::new(),
                sticker_name: String::new(),
                price_coins: 1,
                combo: None,
            },
            EventKind::Question(QuestionView {
                question_id: 1,
                from: String::new(),
                text: String::new(),
                created_ms: 0,
                paid: None,
                pinned_until_ms: None,
                answered: false,
            }),
            EventKind::Answer {
                question_id: 1,
                asker: String::new(),
                text: String::new(),
            },
            EventKind::Thanks {
                gift_id: String::new(),
                to: String::new(),
                text: String::new(),
            },
            EventKind::RoomClosed {
                reason: String::new(),
            },
            EventKind::ComboEnd {
                from: String::new(),
                sticker: String::new(),
                count: 2,
                total_coins: 2,
            },
            EventKind::GoalSet { goal: goal() },
            EventKind::GoalProgress { goal: goal() },
            EventKind::GoalReached { goal: goal() },
            EventKind::GoalEnded {
                goal: goal(),
                reason: String::new(),
            },
        ];
        for k in kinds {
            assert_eq!(EventKind::NAMES[k.index()], k.name());
        }
    }

    #[test]
    fn events_are_flat() {
        let f = Event::encode("r1", "e7", 9, &EventKind::Viewers { count: 3 });
        assert_eq!(
            f.as_str(),
            r#"{"type":"event","room":"r1","epoch":"e7","seq":9,"kind":"viewers","count":3}"#
        );
    }

    #[test]
    fn errors_carry_code_and_reason() {
        let f = error(Some(4), &Error::NotInRoom);
        assert_eq!(
            f.as_str(),
            r#"{"type":"error","id":4,"code":13003,"reason":"not_in_room","message":"join a room first"}"#
        );
    }
}
