//! A room's viewer questions: open ones, and paid ones pinned for a time that grows with price.
//!
//! Owned by a room and touched only under its lock. Bounded by `questions_open_max`: when a new
//! question would exceed it, the oldest unpinned question is dropped. Pins lapse by time; answered
//! questions leave the open list but a paid one stays pinned until its pin lapses, as Super Chat
//! does.

use std::collections::BTreeMap;

use crate::config::PinTier;
use crate::error::{Error, Result};
use crate::protocol::server::{PaidView, QuestionView};

#[derive(Debug, Clone)]
struct Question {
    view: QuestionView,
}

#[derive(Debug)]
pub struct Questions {
    next_id: u64,
    by_id: BTreeMap<u64, Question>,
    open_max: usize,
}

/// How long a question paid with `price_coins` stays pinned: the highest tier it reaches.
pub fn pinned_secs(price_coins: u64, tiers: &[PinTier]) -> u64 {
    tiers
        .iter()
        .rev()
        .find(|t| price_coins >= t.price_coins_min)
        .map_or(0, |t| t.pinned_secs)
}

impl Questions {
    pub fn new(open_max: usize) -> Questions {
        assert!(open_max >= 1);
        Questions {
            next_id: 1,
            by_id: BTreeMap::new(),
            open_max,
        }
    }

    fn is_pinned(q: &Question, now_ms: u64) -> bool {
        q.view.pinned_until_ms.is_some_and(|until| until > now_ms)
    }

    /// Drops answered questions whose pin lapsed and clears lapsed pins.
    fn prune(&mut self, now_ms: u64) {
        self.by_id
            .retain(|_, q| !q.view.answered || Self::is_pinned(q, now_ms));
        for q in self.by_id.values_mut() {
            if !Self::is_pinned(q, now_ms) {
                q.view.pinned_until_ms = None;
            }
        }
    }

    /// Records a new question and returns its view.
    pub fn ask(
        &mut self,
        from: &str,
        text: &str,
        paid: Option<PaidView>,
        pin_secs: u64,
        now_ms: u64,
    ) -> QuestionView {
        self.prune(now_ms);
        while self.by_id.len() >= self.open_max {
            let victim = self
                .by_id
                .iter()
                .find(|(_, q)| !Self::is_pinned(q, now_ms))
                .or_else(|| self.by_id.iter().next())
                .map(|(id, _)| *id);
            match victim {
                Some(id) => self.by_id.remove(&id),
                None => break,
            };
        }
        let id = self.next_id;
        self.next_id += 1;
        let pinned_until_ms = (paid.is_some() && pin_secs > 0).then(|| now_ms + pin_secs * 1000);
        let view = QuestionView {
            question_id: id,
            from: from.to_owned(),
            text: text.to_owned(),
            created_ms: now_ms,
            paid,
            pinned_until_ms,
            answered: false,
        };
        self.by_id.insert(id, Question { view: view.clone() });
        assert!(self.by_id.len() <= self.open_max);
        view
    }

    /// Restores a question a room published before this node ran it (a takeover): the same id,
    /// and later questions numbered after it.
    pub fn restore(&mut self, view: QuestionView, now_ms: u64) {
        self.next_id = self.next_id.max(view.question_id + 1);
        self.by_id.insert(view.question_id, Question { view });
        self.prune(now_ms);
        while self.by_id.len() > self.open_max {
            self.by_id.pop_first();
        }
    }

    /// Marks a question answered and returns it.
    pub fn answer(&mut self, question_id: u64, now_ms: u64) -> Result<QuestionView> {
        self.prune(now_ms);
        let q = self
            .by_id
            .get_mut(&question_id)
            .ok_or(Error::QuestionNotFound(question_id))?;
        q.view.answered = true;
        let view = q.view.clone();
        self.prune(now_ms);
        Ok(view)
    }

    /// `(open, pinned)`: unanswered questions oldest first, and pinned ones by pin expiry, latest
    /// first (the most expensive tends to be on top).
    pub fn snapshot(&mut self, now_ms: u64) -> (Vec<QuestionView>, Vec<QuestionView>) {
        self.prune(now_ms);
        let open = self
            .by_id
            .values()
            .filter(|q| !q.view.answered)
            .map(|q| q.view.clone())
            .collect();
        let mut pinned: Vec<QuestionView> = self
            .by_id
            .values()
            .filter(|q| Self::is_pinned(q, now_ms))
            .map(|q| q.view.clone())
            .collect();
        pinned.sort_by_key(|q| std::cmp::Reverse(q.pinned_until_ms));
        (open, pinned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomsConfig;

    fn paid(price: u64) -> Option<PaidView> {
        Some(PaidView {
            gift_id: "g1".into(),
            sticker: "s".into(),
            price_coins: price,
        })
    }

    #[test]
    fn pin_time_grows_with_price() {
        let tiers = RoomsConfig::default().pin_tiers;
        assert_eq!(pinned_secs(1, &tiers), 0);
        assert!(pinned_secs(500, &tiers) > pinned_secs(100, &tiers));
        assert!(pinned_secs(50_000, &tiers) > pinned_secs(5_000, &tiers));
    }

    #[test]
    fn answered_paid_question_stays_pinned_until_it_lapses() {
        let mut q = Questions::new(10);
        let v = q.ask("a", "why?", paid(100), 60, 1_000);
        assert_eq!(v.pinned_until_ms, Some(61_000));
        q.answer(v.question_id, 2_000).unwrap();
        let (open, pinned) = q.snapshot(3_000);
        assert!(open.is_empty());
        assert_eq!(pinned.len(), 1);
        let (open, pinned) = q.snapshot(61_000);
        assert!(open.is_empty() && pinned.is_empty());
        assert_eq!(
            q.answer(v.question_id, 61_000),
            Err(Error::QuestionNotFound(v.question_id))
        );
    }

    #[test]
    fn bound_drops_the_oldest_unpinned() {
        let mut q = Questions::new(2);
        let pinned = q.ask("a", "paid", paid(100), 60, 0);
        let old = q.ask("b", "free 1", None, 0, 0);
        let new = q.ask("c", "free 2", None, 0, 0);
        let (open, _) = q.snapshot(1);
        let ids: Vec<u64> = open.iter().map(|v| v.question_id).collect();
        assert_eq!(ids, vec![pinned.question_id, new.question_id]);
        assert!(!ids.contains(&old.question_id));
    }
}
