//! PK battles as the ledger records them: one streamer's room challenges another's, the other
//! accepts or declines, and for a fixed time every gift committed in either room adds its coins
//! to that room's score. The ledger is the referee, so two rooms on two nodes agree on every
//! score and on the result without talking to each other:
//!
//! - a battle is one row, created `invited` with both rooms claimed (a room is in at most one
//!   open battle, across all nodes: a unique key on the claimed room);
//! - each gift's own transaction adds its coins to the score of its room's `active` battle (a
//!   trigger on `gifts`, in both backends), if the gift was created before the battle's end; so
//!   a score is exactly the sum of the committed gifts that count, never more;
//! - every change of state goes through [`PkBattle::answer`] or [`PkBattle::finish`] here, the
//!   same rules for both backends; a battle that ended never changes again, so whichever room
//!   finishes it first decides it, and the other reads the same record;
//! - ending releases both rooms' claims.
//!
//! The rooms publish what the ledger says (`room/pk.rs`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The columns of `pk_battles` both backends select, in the order [`PkBattle::from_row`] reads
/// them.
pub(crate) const COLUMNS: &str = "battle_id, challenger_room, challenger, challenger_score_coins,
    opponent_room, opponent, opponent_score_coins, status, created_ms, answer_by_ms, duration_ms,
    started_ms, ends_ms, ended_ms, reason, winner";

/// A row of [`COLUMNS`] as a backend reads it, by column index.
pub(crate) trait PkRow {
    type Error;
    fn text(&self, i: usize) -> std::result::Result<Option<String>, Self::Error>;
    fn int(&self, i: usize) -> std::result::Result<Option<i64>, Self::Error>;
}

/// Where a battle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PkStatus {
    /// Waiting for the opponent's answer until `answer_by_ms`.
    Invited,
    /// Running until `ends_ms`; gifts count.
    Active,
    /// Over; `reason` says why and `winner` who won, if anyone.
    Ended,
}

impl PkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PkStatus::Invited => "invited",
            PkStatus::Active => "active",
            PkStatus::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<PkStatus> {
        [PkStatus::Invited, PkStatus::Active, PkStatus::Ended]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Why a battle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PkEndReason {
    /// The battle ran its full time; the higher score wins, equal scores are a draw.
    TimeUp,
    /// The opponent declined the challenge.
    Declined,
    /// Nobody answered the challenge in time.
    Expired,
    /// A streamer left the battle (`pk_leave`); during a battle, the other room wins.
    Left,
    /// A room closed; during a battle, the other room wins.
    RoomClosed,
}

impl PkEndReason {
    pub const ALL: [PkEndReason; 5] = [
        PkEndReason::TimeUp,
        PkEndReason::Declined,
        PkEndReason::Expired,
        PkEndReason::Left,
        PkEndReason::RoomClosed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PkEndReason::TimeUp => "time_up",
            PkEndReason::Declined => "declined",
            PkEndReason::Expired => "expired",
            PkEndReason::Left => "left",
            PkEndReason::RoomClosed => "room_closed",
        }
    }

    pub fn parse(s: &str) -> Option<PkEndReason> {
        PkEndReason::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One side of a battle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkSide {
    pub room: String,
    pub streamer: String,
    /// Coins of the gifts committed in this room while the battle was active.
    pub score_coins: u64,
}

/// A battle as the ledger records it, and as room events and snapshots show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkBattle {
    pub battle_id: String,
    pub challenger: PkSide,
    pub opponent: PkSide,
    pub status: PkStatus,
    pub created_ms: u64,
    /// The challenge lapses (`expired`) if not answered before this.
    pub answer_by_ms: u64,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// Gifts created from this moment on no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<PkEndReason>,
    /// The winning room; absent for a draw or a battle that never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
}

/// A challenge, as the challenger's room asks the ledger to record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkChallenge {
    pub challenger_room: String,
    pub challenger: String,
    pub opponent_room: String,
    pub opponent: String,
    pub answer_ms: u64,
    pub duration_ms: u64,
}

impl PkChallenge {
    /// Room `a` (streamer `ann`) challenges room `b` (streamer `bo`): 10 s to answer, 60 s of
    /// battle. For tests.
    #[cfg(test)]
    pub(crate) fn example() -> PkChallenge {
        PkChallenge {
            challenger_room: "a".into(),
            challenger: "ann".into(),
            opponent_room: "b".into(),
            opponent: "bo".into(),
            answer_ms: 10_000,
            duration_ms: 60_000,
        }
    }

    /// The battle this challenge opens at `now_ms`, with a new id.
    pub fn battle(&self, now_ms: u64) -> Result<PkBattle> {
        if self.challenger_room == self.opponent_room {
            return Err(Error::InvalidMessage(
                "a room cannot challenge itself".into(),
            ));
        }
        assert!(self.answer_ms >= 1 && self.duration_ms >= 1);
        Ok(PkBattle {
            battle_id: format!("k{now_ms:011x}{:016x}", rand::random::<u64>()),
            challenger: PkSide {
                room: self.challenger_room.clone(),
                streamer: self.challenger.clone(),
                score_coins: 0,
            },
            opponent: PkSide {
                room: self.opponent_room.clone(),
                streamer: self.opponent.clone(),
                score_coins: 0,
            },
            status: PkStatus::Invited,
            created_ms: now_ms,
            answer_by_ms: now_ms.saturating_add(self.answer_ms),
            duration_ms: self.duration_ms,
            started_ms: None,
            ends_ms: None,
            ended_ms: None,
            reason: None,
            winner: None,
        })
    }
}

/// A change a room asks of a battle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkChange {
    /// The opponent's room answers the challenge.
    Answer { room: String, accept: bool },
    /// End it: `room` left or closed, or (`TimeUp`/`Expired`) its time ran out.
    Finish { room: String, reason: PkEndReason },
}

impl PkBattle {
    /// The battle in a row of [`COLUMNS`]; the schema's `NOT NULL` and `CHECK`s make every
    /// expectation here hold.
    pub(crate) fn from_row<R: PkRow>(r: &R) -> std::result::Result<PkBattle, R::Error> {
        let text = |i| -> std::result::Result<String, R::Error> {
            Ok(r.text(i)?.expect("a NOT NULL column"))
        };
        let coins = |i| -> std::result::Result<u64, R::Error> {
            Ok(r.int(i)?.expect("a NOT NULL column") as u64)
        };
        let ms =
            |i| -> std::result::Result<Option<u64>, R::Error> { Ok(r.int(i)?.map(|v| v as u64)) };
        Ok(PkBattle {
            battle_id: text(0)?,
            challenger: PkSide {
                room: text(1)?,
                streamer: text(2)?,
                score_coins: coins(3)?,
            },
            opponent: PkSide {
                room: text(4)?,
                streamer: text(5)?,
                score_coins: coins(6)?,
            },
            status: PkStatus::parse(&text(7)?).expect("the schema checks a battle's status"),
            created_ms: coins(8)?,
            answer_by_ms: coins(9)?,
            duration_ms: coins(10)?,
            started_ms: ms(11)?,
            ends_ms: ms(12)?,
            ended_ms: ms(13)?,
            reason: r.text(14)?.as_deref().and_then(PkEndReason::parse),
            winner: r.text(15)?,
        })
    }

    /// Whether `room` is one of the battle's two rooms.
    pub fn has_room(&self, room: &str) -> bool {
        self.challenger.room == room || self.opponent.room == room
    }

    /// The other room of the battle.
    pub fn other_room(&self, room: &str) -> &str {
        if self.challenger.room == room {
            &self.opponent.room
        } else {
            &self.challenger.room
        }
    }

    /// Whether the battle's clock has run out at `now_ms`: an unanswered challenge past its
    /// answer time, or an active battle past its end.
    pub fn is_due(&self, now_ms: u64) -> bool {
        match self.status {
            PkStatus::Invited => now_ms >= self.answer_by_ms,
            PkStatus::Active => self.ends_ms.is_some_and(|e| now_ms >= e),
            PkStatus::Ended => false,
        }
    }

    /// Milliseconds left of an active battle at `now_ms`.
    pub fn remaining_ms(&self, now_ms: u64) -> u64 {
        self.ends_ms.map_or(0, |e| e.saturating_sub(now_ms))
    }

    /// Applies `change` at `now_ms`. An ended battle never changes (the change is a no-op that
    /// returns `Ok`), so two rooms finishing at once agree on the first result. Refusals:
    /// [`Error::PkNotFound`] for an answer from the wrong room, or to a challenge no longer open.
    pub fn apply(&mut self, change: &PkChange, now_ms: u64) -> Result<()> {
        if self.status == PkStatus::Ended {
            return match change {
                PkChange::Answer { .. } => Err(Error::PkNotFound(self.battle_id.clone())),
                PkChange::Finish { .. } => Ok(()),
            };
        }
        // A clock that ran out decides before anything else does.
        if self.is_due(now_ms) {
            self.end_by_clock(now_ms);
            return match change {
                PkChange::Answer { .. } => Err(Error::PkNotFound(self.battle_id.clone())),
                PkChange::Finish { .. } => Ok(()),
            };
        }
        match change {
            PkChange::Answer { room, accept } => self.answer(room, *accept, now_ms),
            PkChange::Finish { room, reason } => {
                match reason {
                    // Only the clock ends a battle on time; asked early, it is not due yet.
                    PkEndReason::TimeUp | PkEndReason::Expired => {}
                    PkEndReason::Declined => self.answer(room, false, now_ms)?,
                    PkEndReason::Left | PkEndReason::RoomClosed => {
                        if !self.has_room(room) {
                            return Err(Error::PkNotFound(self.battle_id.clone()));
                        }
                        let winner = (self.status == PkStatus::Active)
                            .then(|| self.other_room(room).to_owned());
                        self.end(*reason, winner, now_ms);
                    }
                }
                Ok(())
            }
        }
    }

    fn answer(&mut self, room: &str, accept: bool, now_ms: u64) -> Result<()> {
        if self.status != PkStatus::Invited || self.opponent.room != room {
            return Err(Error::PkNotFound(self.battle_id.clone()));
        }
        if accept {
            self.status = PkStatus::Active;
            self.started_ms = Some(now_ms);
            self.ends_ms = Some(now_ms.saturating_add(self.duration_ms));
        } else {
            self.end(PkEndReason::Declined, None, now_ms);
        }
        Ok(())
    }

    fn end_by_clock(&mut self, now_ms: u64) {
        match self.status {
            PkStatus::Invited => self.end(PkEndReason::Expired, None, now_ms),
            PkStatus::Active => {
                let (a, b) = (&self.challenger, &self.opponent);
                let winner = match a.score_coins.cmp(&b.score_coins) {
                    std::cmp::Ordering::Greater => Some(a.room.clone()),
                    std::cmp::Ordering::Less => Some(b.room.clone()),
                    std::cmp::Ordering::Equal => None,
                };
                self.end(PkEndReason::TimeUp, winner, now_ms);
            }
            PkStatus::Ended => {}
        }
    }

    fn end(&mut self, reason: PkEndReason, winner: Option<String>, now_ms: u64) {
        assert_ne!(self.status, PkStatus::Ended, "a battle ends once");
        assert!(
            winner.as_deref().is_none_or(|w| self.has_room(w)),
            "the winner is one of the battle's rooms"
        );
        self.status = PkStatus::Ended;
        self.ended_ms = Some(now_ms);
        self.reason = Some(reason);
        self.winner = winner;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invited(now_ms: u64) -> PkBattle {
        PkChallenge::example().battle(now_ms).unwrap()
    }

    fn answer(room: &str, accept: bool) -> PkChange {
        PkChange::Answer {
            room: room.into(),
            accept,
        }
    }

    fn finish(room: &str, reason: PkEndReason) -> PkChange {
        PkChange::Finish {
            room: room.into(),
            reason,
        }
    }

    #[test]
    fn only_the_opponent_answers_and_only_in_time() {
        let mut b = invited(1_000);
        assert_eq!(
            b.apply(&answer("a", true), 2_000),
            Err(Error::PkNotFound(b.battle_id.clone()))
        );
        b.apply(&answer("b", true), 2_000).unwrap();
        assert_eq!(b.status, PkStatus::Active);
        assert_eq!((b.started_ms, b.ends_ms), (Some(2_000), Some(62_000)));

        let mut late = invited(1_000);
        assert!(late.apply(&answer("b", true), 11_000).is_err());
        assert_eq!(
            (late.status, late.reason),
            (PkStatus::Ended, Some(PkEndReason::Expired))
        );
    }

    #[test]
    fn time_up_waits_for_the_clock_and_the_higher_score_wins() {
        let mut b = invited(0);
        b.apply(&answer("b", true), 0).unwrap();
        b.challenger.score_coins = 5;
        b.opponent.score_coins = 9;
        b.apply(&finish("a", PkEndReason::TimeUp), 59_999).unwrap();
        assert_eq!(b.status, PkStatus::Active, "not due yet");
        b.apply(&finish("a", PkEndReason::TimeUp), 60_000).unwrap();
        assert_eq!(b.winner.as_deref(), Some("b"));
        assert_eq!(b.reason, Some(PkEndReason::TimeUp));
        // Ended: nothing changes it any more.
        let record = b.clone();
        b.apply(&finish("b", PkEndReason::Left), 70_000).unwrap();
        assert_eq!(b, record);
    }

    #[test]
    fn leaving_a_running_battle_forfeits_it_and_leaving_a_challenge_has_no_winner() {
        let mut b = invited(0);
        b.apply(&answer("b", true), 0).unwrap();
        b.challenger.score_coins = 100;
        b.apply(&finish("a", PkEndReason::RoomClosed), 1_000)
            .unwrap();
        assert_eq!(b.winner.as_deref(), Some("b"));

        let mut c = invited(0);
        c.apply(&finish("a", PkEndReason::Left), 1_000).unwrap();
        assert_eq!(
            (c.reason, c.winner.as_deref()),
            (Some(PkEndReason::Left), None)
        );
        assert!(c.apply(&answer("b", true), 1_001).is_err());
    }

    proptest! {
        /// Whatever rooms ask in whatever order, a battle ends at most once, its winner is one of
        /// its rooms, and once ended it never changes.
        #[test]
        fn a_battle_ends_once_and_stays_ended(
            steps in proptest::collection::vec((0u8..7, 0u64..80_000, any::<bool>()), 1..12),
            scores in (0u64..1_000, 0u64..1_000),
        ) {
            let mut b = invited(0);
            let mut ended: Option<PkBattle> = None;
            let mut now = 0;
            for (op, dt, side) in steps {
                now += dt / 4;
                let room = if side { "a" } else { "b" };
                let change = match op {
                    0 => answer(room, true),
                    1 => answer(room, false),
                    2 => finish(room, PkEndReason::TimeUp),
                    3 => finish(room, PkEndReason::Expired),
                    4 => finish(room, PkEndReason::Left),
                    5 => finish(room, PkEndReason::RoomClosed),
                    _ => finish(room, PkEndReason::Declined),
                };
                if b.status == PkStatus::Active {
                    b.challenger.score_coins = scores.0;
                    b.opponent.score_coins = scores.1;
                }
                let _ = b.apply(&change, now);
                if let Some(e) = &ended {
                    prop_assert_eq!(&b, e);
                } else if b.status == PkStatus::Ended {
                    prop_assert!(b.winner.as_deref().is_none_or(|w| w == "a" || w == "b"));
                    prop_assert!(b.reason.is_some() && b.ended_ms.is_some());
                    if b.started_ms.is_none() {
                        prop_assert_eq!(&b.winner, &None);
                    }
                    ended = Some(b.clone());
                }
            }
        }
    }
}
