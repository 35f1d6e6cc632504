//! A room's goal: the streamer's target in coins, moved by every committed gift that counts.
//!
//! The goal lives in the room's sequencer state and is touched only under the room's lock, so
//! its events are numbered in the room's `seq` with the gifts that move it. One goal at a time:
//! - `goal_set` starts it (its `seq` is the goal's id) and ends the previous one with
//!   `goal_ended` `replaced`;
//! - a gift (or paid question) committed in the room counts when the goal has no sticker or the
//!   goal's sticker is the gift's; progress is the sum of the coins of the gifts that count,
//!   published after them in `seq` order, so it is never ahead of the ledger;
//! - `goal_progress` is coalesced: the room ticker publishes it at most once per
//!   `rooms.viewer_count_interval_ms`, only when progress changed;
//! - `goal_reached` comes once, right after the gift that crosses the target;
//! - `goal_ended` comes at the deadline (ticker), on `end_goal`, when replaced, or as the room
//!   closes.
//!
//! Every goal event carries the whole goal, its progress as of that event included, so after a
//! takeover the new owner rebuilds it from the latest kept goal event plus the gifts after it
//! ([`Goal::restore`]). The limit: if no event of the goal is kept any more (the room published
//! more than `rooms.history_events_max` events since the goal's last event), the goal is lost
//! with the old owner and ends with no `goal_ended`.

use crate::protocol::server::{EventKind, GoalView};

use super::{Room, State};
use crate::error::{Error, Result};

/// Why a goal ended, as `goal_ended` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Deadline,
    Ended,
    Replaced,
    RoomClosed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deadline => "deadline",
            EndReason::Ended => "ended",
            EndReason::Replaced => "replaced",
            EndReason::RoomClosed => "room_closed",
        }
    }
}

/// The current goal and what the room was last told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goal {
    view: GoalView,
    /// The progress the room's latest goal event showed.
    published_coins: u64,
}

impl Goal {
    pub fn new(
        goal_id: u64,
        target_coins: u64,
        sticker: Option<String>,
        deadline_ms: Option<u64>,
    ) -> Goal {
        assert!(target_coins >= 1);
        Goal {
            view: GoalView {
                goal_id,
                target_coins,
                sticker,
                deadline_ms,
                progress_coins: 0,
                reached: false,
            },
            published_coins: 0,
        }
    }

    /// The goal as a kept goal event showed it.
    pub fn restore(view: GoalView) -> Goal {
        Goal {
            published_coins: view.progress_coins,
            view,
        }
    }

    pub fn view(&self) -> &GoalView {
        &self.view
    }

    /// Adds a committed gift if it counts.
    pub fn add(&mut self, sticker: &str, price_coins: u64) {
        if self.view.sticker.as_deref().is_none_or(|s| s == sticker) {
            self.view.progress_coins = self.view.progress_coins.saturating_add(price_coins);
        }
    }

    /// Marks the goal reached if its progress just crossed the target; true exactly once.
    pub fn cross(&mut self) -> bool {
        if self.view.reached || self.view.progress_coins < self.view.target_coins {
            return false;
        }
        self.view.reached = true;
        true
    }

    /// Whether the deadline has passed at `now_ms`.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.view.deadline_ms.is_some_and(|d| now_ms >= d)
    }

    /// The goal's view for an event, which then shows its current progress.
    fn published(&mut self) -> GoalView {
        self.published_coins = self.view.progress_coins;
        self.view.clone()
    }

    /// The goal's view for a `goal_progress` event, if progress changed since the last event.
    fn progress(&mut self) -> Option<GoalView> {
        (self.view.progress_coins != self.published_coins).then(|| self.published())
    }
}

impl Room {
    /// Sets the room's goal, ending the current one with `replaced`. Returns the new goal and
    /// the `seq` of its `goal_set`.
    pub fn set_goal(
        &self,
        target_coins: u64,
        sticker: Option<String>,
        deadline_ms: Option<u64>,
    ) -> Result<(GoalView, u64)> {
        let mut state = self.live()?;
        self.end_goal_with(&mut state, EndReason::Replaced);
        let mut goal = Goal::new(state.seq + 1, target_coins, sticker, deadline_ms);
        let view = goal.published();
        let seq = self.publish(&mut state, &EventKind::GoalSet { goal: view.clone() });
        assert_eq!(seq, view.goal_id, "a goal's id is its goal_set's seq");
        state.goal = Some(goal);
        Ok((view, seq))
    }

    /// Ends the room's goal at the streamer's request. Returns it and the `seq` of `goal_ended`.
    pub fn end_goal(&self) -> Result<(GoalView, u64)> {
        let mut state = self.live()?;
        self.end_goal_with(&mut state, EndReason::Ended)
            .ok_or(Error::GoalNotFound)
    }

    /// Publishes `goal_ended` for the current goal, if any.
    pub(super) fn end_goal_with(
        &self,
        state: &mut State,
        reason: EndReason,
    ) -> Option<(GoalView, u64)> {
        let mut goal = state.goal.take()?;
        let view = goal.published();
        self.metrics.goal_ended(view.reached);
        let kind = EventKind::GoalEnded {
            goal: view.clone(),
            reason: reason.as_str().to_owned(),
        };
        Some((view, self.publish(state, &kind)))
    }

    /// Counts a committed gift that was just published; publishes `goal_reached` if it crossed
    /// the target.
    pub(super) fn goal_gift(&self, state: &mut State, sticker: &str, price_coins: u64) {
        if let Some(goal) = state.goal.as_mut() {
            goal.add(sticker, price_coins);
        }
        self.goal_reached(state);
    }

    fn goal_reached(&self, state: &mut State) {
        let Some(goal) = state.goal.as_mut() else {
            return;
        };
        if goal.cross() {
            let view = goal.published();
            self.publish(state, &EventKind::GoalReached { goal: view });
        }
    }

    /// The ticker's beat: ends a goal past its deadline, or publishes its progress if it changed.
    pub(super) fn tick_goal(&self, state: &mut State, now_ms: u64) {
        // A goal rebuilt after a takeover may have been crossed without its `goal_reached`.
        self.goal_reached(state);
        if state.goal.as_ref().is_some_and(|g| g.is_due(now_ms)) {
            self.end_goal_with(state, EndReason::Deadline);
            return;
        }
        if let Some(view) = state.goal.as_mut().and_then(Goal::progress) {
            self.publish(state, &EventKind::GoalProgress { goal: view });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_goals_sticker_counts_and_it_is_reached_once() {
        let mut g = Goal::new(3, 100, Some("rose".into()), None);
        g.add("coffee", 100);
        assert_eq!(g.view().progress_coins, 0);
        g.add("rose", 60);
        assert!(!g.cross());
        assert_eq!(g.progress().map(|v| v.progress_coins), Some(60));
        assert_eq!(g.progress(), None, "coalesced: nothing new");
        g.add("rose", 60);
        assert!(g.cross());
        assert!(!g.cross());
        g.add("rose", 60);
        assert_eq!(g.view().progress_coins, 180);
        assert!(g.view().reached);
    }

    #[test]
    fn any_sticker_counts_without_a_filter_and_deadlines_are_inclusive() {
        let mut g = Goal::new(1, 10, None, Some(5_000));
        g.add("coffee", 3);
        g.add("rose", 4);
        assert_eq!(g.view().progress_coins, 7);
        assert!(!g.is_due(4_999));
        assert!(g.is_due(5_000));
        let restored = Goal::restore(g.view().clone());
        assert_eq!(restored.view(), g.view());
        assert_eq!(restored.published_coins, 7);
    }
}
