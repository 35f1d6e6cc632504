//! Goal commands: the streamer's `set_goal` and `end_goal`. The goal itself, its progress and
//! its events belong to the room's sequencer (`room/goal.rs`); this file checks the command and
//! turns a relative `duration_ms` into the goal's wall-clock deadline.

use serde_json::json;

use super::{ack, Reply, Session};
use crate::error::{Error, Result};

impl Session {
    pub(super) fn handle_set_goal(
        &mut self,
        id: u64,
        target_coins: u64,
        sticker: Option<String>,
        duration_ms: Option<u64>,
    ) -> Result<Reply> {
        let room = self.owned_room()?;
        let rooms = &self.app.config.rooms;
        if target_coins == 0 || target_coins > rooms.goal_target_coins_max {
            return Err(Error::InvalidAmount(format!(
                "target_coins must be 1 to {}",
                rooms.goal_target_coins_max
            )));
        }
        let deadline_ms = match duration_ms {
            Some(d) if d == 0 || d > rooms.goal_duration_ms_max => {
                return Err(Error::InvalidMessage(format!(
                    "duration_ms must be 1 to {}",
                    rooms.goal_duration_ms_max
                )))
            }
            Some(d) => Some(crate::ledger::now_ms().saturating_add(d)),
            None => None,
        };
        let sticker = sticker.map(|s| self.sticker(s).map(|s| s.id)).transpose()?;
        let (goal, seq) = room.set_goal(target_coins, sticker, deadline_ms)?;
        ack(id, &json!({ "goal": goal, "seq": seq }))
    }

    pub(super) fn handle_end_goal(&mut self, id: u64) -> Result<Reply> {
        let room = self.owned_room()?;
        let (goal, seq) = room.end_goal()?;
        ack(id, &json!({ "goal": goal, "seq": seq }))
    }
}
