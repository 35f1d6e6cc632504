//! A room's PK battle, as its members see it: the room's copy of the battle the ledger referees
//! (`ledger/pk.rs`), and the events that tell the room of each change, numbered in the room's
//! `seq` like every other event.
//!
//! The ledger decides; each of the two rooms (possibly on two nodes) publishes what the ledger
//! says, through [`Room::pk_learn`]:
//! - `pk_invite` when the room first learns of a challenge it is in;
//! - `pk_started` when it learns the challenge was accepted;
//! - `pk_score` when the scores it learns differ from those it last published: the room ticker
//!   reads the battle from the ledger once per beat (`rooms.viewer_count_interval_ms`), so scores
//!   reach the room coalesced, and they are the ledger's committed sums, the same in both rooms;
//! - `pk_ended`, exactly once, when it learns the battle is over, and the room forgets it.
//!
//! A room learns of a change from the command that made it (its own streamer's), from a notice
//! of the other room (`session/pk.rs`), or at the latest from its next beat's read, which also
//! ends the battle in the ledger once its clock has run out. Records older than what the room
//! already showed are ignored, so notices and reads may arrive in any order.
//!
//! After a takeover the new owner rebuilds the battle from the latest kept `pk_*` event (as goals
//! are rebuilt) and goes on reading it from the ledger; the same limit as goals applies.

use super::{Room, State};
use crate::ledger::now_ms;
use crate::ledger::pk::{PkBattle, PkChange, PkEndReason, PkStatus};
use crate::protocol::server::EventKind;

/// What a room did with a battle it was told of.
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// The room is up to date; the `seq` of the event it published, if any.
    Done(Option<u64>),
    /// The room still shows battle `.0`, which ended in the ledger (a room is in one battle at a
    /// time): it must be read and learnt first.
    Behind(String),
}

fn rank(status: PkStatus) -> u8 {
    match status {
        PkStatus::Invited => 0,
        PkStatus::Active => 1,
        PkStatus::Ended => 2,
    }
}

impl Room {
    /// The room's battle or open challenge, as last published.
    pub fn pk_current(&self) -> Option<PkBattle> {
        self.lock().pk.clone()
    }

    /// Makes the room show `battle`, a record from the ledger, publishing what changed.
    pub fn pk_learn(&self, battle: &PkBattle) -> Learned {
        let Ok(mut state) = self.live() else {
            return Learned::Done(None);
        };
        if !battle.has_room(&self.id) || state.pk_ended.as_ref() == Some(&battle.battle_id) {
            return Learned::Done(None);
        }
        let Some(shown) = state.pk.as_ref() else {
            let kind = match battle.status {
                PkStatus::Invited => EventKind::PkInvite {
                    battle: Box::new(battle.clone()),
                },
                PkStatus::Active => self.started(battle),
                // A battle this room never showed (its challenge's notice was lost).
                PkStatus::Ended => return Learned::Done(None),
            };
            state.pk = Some(battle.clone());
            return Learned::Done(Some(self.publish(&mut state, &kind)));
        };
        if shown.battle_id != battle.battle_id {
            return match battle.status {
                PkStatus::Ended => Learned::Done(None),
                _ => Learned::Behind(shown.battle_id.clone()),
            };
        }
        if rank(battle.status) < rank(shown.status) {
            return Learned::Done(None);
        }
        let scores = |b: &PkBattle| (b.challenger.score_coins, b.opponent.score_coins);
        let kind = match (shown.status, battle.status) {
            (_, PkStatus::Ended) => EventKind::PkEnded {
                battle: Box::new(battle.clone()),
            },
            (PkStatus::Invited, PkStatus::Active) => self.started(battle),
            (PkStatus::Active, PkStatus::Active) if scores(shown) != scores(battle) => {
                EventKind::PkScore {
                    battle: Box::new(battle.clone()),
                    remaining_ms: battle.remaining_ms(now_ms()),
                }
            }
            _ => {
                state.pk = Some(battle.clone());
                return Learned::Done(None);
            }
        };
        if battle.status == PkStatus::Ended {
            state.pk = None;
            state.pk_ended = Some(battle.battle_id.clone());
            self.metrics
                .pk_ended(battle.reason.unwrap_or(PkEndReason::TimeUp));
        } else {
            state.pk = Some(battle.clone());
        }
        Learned::Done(Some(self.publish(&mut state, &kind)))
    }

    fn started(&self, battle: &PkBattle) -> EventKind {
        EventKind::PkStarted {
            battle: Box::new(battle.clone()),
            remaining_ms: battle.remaining_ms(now_ms()),
        }
    }

    /// The room ticker's beat: whether the room's battle should be read from the ledger now (one
    /// call at a time), and with which change (the end, once its clock has run out). A `Some`
    /// must be answered with [`Room::pk_called`].
    pub fn pk_due(&self, now_ms: u64) -> Option<(String, Option<PkChange>)> {
        let mut state = self.live().ok()?;
        if state.pk_calling {
            return None;
        }
        let battle = state.pk.as_ref()?;
        let change = battle.is_due(now_ms).then(|| PkChange::Finish {
            room: self.id.clone(),
            reason: PkEndReason::TimeUp,
        });
        let id = battle.battle_id.clone();
        state.pk_calling = true;
        Some((id, change))
    }

    /// The answer to a call [`Room::pk_due`] asked for: the battle as the ledger has it now.
    pub fn pk_called(&self, battle: crate::error::Result<Option<PkBattle>>) {
        self.lock().pk_calling = false;
        match battle {
            Ok(Some(battle)) => {
                // The room's battle, or a newer one whose notice comes next: nothing to catch up.
                let _ = self.pk_learn(&battle);
            }
            Ok(None) => {
                tracing::error!(room = %self.id, "the room's PK battle is not in the ledger")
            }
            Err(e) => {
                tracing::warn!(room = %self.id, error = %e, "could not read the room's PK battle")
            }
        }
    }

    /// Rebuilds the battle from a kept `pk_*` event (a takeover; see `Room::resume`).
    pub(super) fn pk_restore(state: &mut State, kind: &str, battle: Option<PkBattle>) {
        if kind == "pk_ended" {
            state.pk = None;
            state.pk_ended = battle.map(|b| b.battle_id);
        } else {
            state.pk = battle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomsConfig;
    use crate::fanout::LocalFanout;
    use crate::ledger::pk::PkChallenge;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    fn room(id: &str) -> Room {
        Room::new(
            id,
            "star",
            "t",
            &RoomsConfig::default(),
            Arc::new(Metrics::new()),
            &LocalFanout,
        )
    }

    fn battle() -> PkBattle {
        PkChallenge::example().battle(now_ms()).unwrap()
    }

    fn kinds(r: &Room) -> Vec<String> {
        r.lock()
            .history
            .iter()
            .map(|k| {
                let v: serde_json::Value = serde_json::from_str(k.event.bytes.as_str()).unwrap();
                v["kind"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_room_publishes_each_change_once_and_ignores_stale_records() {
        let r = room("b");
        let invited = battle();
        let mut active = invited.clone();
        active
            .apply(
                &PkChange::Answer {
                    room: "b".into(),
                    accept: true,
                },
                now_ms(),
            )
            .unwrap();
        assert!(matches!(r.pk_learn(&invited), Learned::Done(Some(1))));
        assert_eq!(r.pk_learn(&invited), Learned::Done(None));
        assert!(matches!(r.pk_learn(&active), Learned::Done(Some(2))));
        assert_eq!(r.pk_learn(&invited), Learned::Done(None), "stale");
        assert_eq!(r.pk_learn(&active), Learned::Done(None), "scores unchanged");
        let mut scored = active.clone();
        scored.opponent.score_coins = 7;
        assert!(matches!(r.pk_learn(&scored), Learned::Done(Some(3))));

        // A new challenge while the room still shows this battle: learn the old one first.
        let newer = battle();
        assert_eq!(
            r.pk_learn(&newer),
            Learned::Behind(active.battle_id.clone())
        );
        let mut ended = scored.clone();
        ended
            .apply(
                &PkChange::Finish {
                    room: "a".into(),
                    reason: PkEndReason::Left,
                },
                now_ms(),
            )
            .unwrap();
        assert!(matches!(r.pk_learn(&ended), Learned::Done(Some(4))));
        assert_eq!(r.pk_learn(&ended), Learned::Done(None), "ended once");
        // A notice overtaken by the end (its task ran late) does not bring the battle back.
        assert_eq!(r.pk_learn(&scored), Learned::Done(None));
        assert_eq!(r.pk_learn(&invited), Learned::Done(None));
        assert!(matches!(r.pk_learn(&newer), Learned::Done(Some(5))));
        assert_eq!(
            kinds(&r),
            [
                "pk_invite",
                "pk_started",
                "pk_score",
                "pk_ended",
                "pk_invite"
            ]
        );
        // Rooms not in the battle ignore it.
        let c = room("c");
        assert_eq!(c.pk_learn(&newer), Learned::Done(None));
    }

    #[test]
    fn the_beat_reads_one_at_a_time_and_ends_the_battle_once_its_clock_ran_out() {
        let r = room("a");
        assert_eq!(r.pk_due(now_ms()), None, "no battle");
        let b = battle();
        r.pk_learn(&b);
        assert_eq!(r.pk_due(now_ms()), Some((b.battle_id.clone(), None)));
        assert_eq!(r.pk_due(now_ms()), None, "one call at a time");
        r.pk_called(Ok(Some(b.clone())));
        let (_, change) = r.pk_due(b.answer_by_ms).unwrap();
        assert_eq!(
            change,
            Some(PkChange::Finish {
                room: "a".into(),
                reason: PkEndReason::TimeUp
            })
        );
    }
}
