//! Gift combos: consecutive gifts of one sticker from one sender, each within
//! `rooms.combo_window_ms` of the previous one.
//!
//! A room's [`Combos`] lives in its sequencer state and is touched only under the room's lock, so
//! a combo's progress (`combo` on a `gift` event) and its end (`combo_end`) are numbered in the
//! room's `seq` like every other event. A sender has at most one combo at a time: a gift of
//! another sticker ends theirs at once. A lone gift is tracked as a combo of one that may grow;
//! when it lapses nothing is published, because a combo is two or more gifts. Every combo of two
//! or more ends exactly once, with one `combo_end`:
//! - when its window lapses (the room ticker checks, so the end comes up to one
//!   `viewer_count_interval_ms` after the window);
//! - when its sender gifts another sticker (the `combo_end` comes just before that gift);
//! - when the tracker is full (`rooms.combos_open_max` senders) and a new sender gifts: the
//!   sender whose last gift is oldest ends at once;
//! - when the room closes (just before `room_closed`).
//!
//! A combo belongs to the sender, not to a connection: a sender who disconnects keeps their
//! combo until its window lapses, and continues it if they are back in time, on any node. After
//! a takeover the new owner rebuilds open combos from the kept `gift` and `combo_end` events
//! ([`Combos::restore`], [`Combos::forget`]), so a combo the old owner had not ended yet ends
//! once, on the new owner.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::server::{ComboView, EventKind};

/// A combo of two or more gifts that ended, to publish as `combo_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub from: String,
    pub sticker: String,
    pub count: u32,
    pub total_coins: u64,
}

impl Ended {
    pub fn event(self) -> EventKind {
        EventKind::ComboEnd {
            from: self.from,
            sticker: self.sticker,
            count: self.count,
            total_coins: self.total_coins,
        }
    }
}

/// One sender's current run of gifts.
#[derive(Debug)]
struct Open {
    sticker: String,
    count: u32,
    total_coins: u64,
    last_at: Instant,
}

impl Open {
    /// The combo's end, if it is a combo (two or more gifts) at all.
    fn end(self, from: String) -> Option<Ended> {
        (self.count >= 2).then_some(Ended {
            from,
            sticker: self.sticker,
            count: self.count,
            total_coins: self.total_coins,
        })
    }
}

/// The open combos of one room, at most `open_max` senders.
#[derive(Debug)]
pub struct Combos {
    by_sender: HashMap<String, Open>,
    /// Combos ended while no event could be published (evicted while rebuilding after a
    /// takeover); the next [`Combos::lapse`] returns them. At most `open_max` long.
    ending: Vec<Ended>,
    window: Duration,
    open_max: usize,
}

impl Combos {
    pub fn new(window: Duration, open_max: usize) -> Combos {
        assert!(open_max >= 1 && !window.is_zero());
        Combos {
            by_sender: HashMap::new(),
            ending: Vec::new(),
            window,
            open_max,
        }
    }

    /// Open senders, lone gifts included.
    pub fn len(&self) -> usize {
        self.by_sender.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sender.is_empty()
    }

    /// Records a committed gift. Returns the combos it ends, to publish before the gift, and the
    /// gift's place in its combo when it continues one.
    pub fn gift(
        &mut self,
        from: &str,
        sticker: &str,
        price_coins: u64,
        now: Instant,
    ) -> (Vec<Ended>, Option<ComboView>) {
        let mut ended = Vec::new();
        if let Some(open) = self.by_sender.get_mut(from) {
            let in_time = now.saturating_duration_since(open.last_at) < self.window;
            if open.sticker == sticker && in_time {
                open.count = open.count.saturating_add(1);
                open.total_coins = open.total_coins.saturating_add(price_coins);
                open.last_at = now;
                let view = ComboView {
                    count: open.count,
                    total_coins: open.total_coins,
                };
                return (ended, Some(view));
            }
            let open = self.by_sender.remove(from).expect("just found");
            ended.extend(open.end(from.to_owned()));
        }
        ended.extend(self.make_room());
        self.insert(from, sticker, 1, price_coins, now);
        (ended, None)
    }

    /// Ends the sender whose last gift is oldest if the tracker is full.
    fn make_room(&mut self) -> Option<Ended> {
        if self.by_sender.len() < self.open_max {
            return None;
        }
        let oldest = self
            .by_sender
            .iter()
            .min_by_key(|(from, open)| (open.last_at, from.as_str()))
            .map(|(from, _)| from.clone())?;
        let open = self.by_sender.remove(&oldest).expect("just found");
        open.end(oldest)
    }

    fn insert(&mut self, from: &str, sticker: &str, count: u32, total_coins: u64, at: Instant) {
        let open = Open {
            sticker: sticker.to_owned(),
            count,
            total_coins,
            last_at: at,
        };
        self.by_sender.insert(from.to_owned(), open);
        assert!(self.by_sender.len() <= self.open_max, "combos are bounded");
    }

    /// Ends every combo whose window has lapsed at `now`, in sender order.
    pub fn lapse(&mut self, now: Instant) -> Vec<Ended> {
        let mut ended = std::mem::take(&mut self.ending);
        let window = self.window;
        let lapsed: Vec<String> = self
            .by_sender
            .iter()
            .filter(|(_, open)| now.saturating_duration_since(open.last_at) >= window)
            .map(|(from, _)| from.clone())
            .collect();
        let mut fresh: Vec<Ended> = lapsed
            .into_iter()
            .filter_map(|from| {
                let open = self.by_sender.remove(&from).expect("just listed");
                open.end(from)
            })
            .collect();
        fresh.sort_by(|a, b| a.from.cmp(&b.from));
        ended.extend(fresh);
        ended
    }

    /// Ends every combo, as the room closes.
    pub fn end_all(&mut self) -> Vec<Ended> {
        let mut ended = std::mem::take(&mut self.ending);
        let mut rest: Vec<Ended> = self
            .by_sender
            .drain()
            .filter_map(|(from, open)| open.end(from))
            .collect();
        rest.sort_by(|a, b| a.from.cmp(&b.from));
        ended.extend(rest);
        ended
    }

    /// Rebuilds a sender's run from a kept `gift` event made `at`: the event's `combo` gives its
    /// count and coins, or it was a lone gift.
    pub fn restore(
        &mut self,
        from: &str,
        sticker: &str,
        price_coins: u64,
        combo: Option<ComboView>,
        at: Instant,
    ) {
        let (count, total_coins) = combo.map_or((1, price_coins), |c| (c.count, c.total_coins));
        if let Some(open) = self.by_sender.remove(from) {
            // The old owner ended it just before this gift; its `combo_end` may already be in
            // the kept events (then `forget` ran), and otherwise it ends now, exactly once.
            if count == 1 || open.sticker != sticker {
                self.ending.extend(open.end(from.to_owned()));
            }
        } else if let Some(ended) = self.make_room() {
            self.ending.push(ended);
        }
        self.ending.truncate(self.open_max);
        self.insert(from, sticker, count, total_coins, at);
    }

    /// A kept `combo_end` event: the old owner already ended this sender's combo.
    pub fn forget(&mut self, from: &str, sticker: &str) {
        if self
            .by_sender
            .get(from)
            .is_some_and(|o| o.sticker == sticker)
        {
            self.by_sender.remove(from);
        }
        self.ending
            .retain(|e| !(e.from == from && e.sticker == sticker));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const WINDOW: Duration = Duration::from_millis(3_000);

    fn ended(from: &str, sticker: &str, count: u32, total_coins: u64) -> Ended {
        Ended {
            from: from.into(),
            sticker: sticker.into(),
            count,
            total_coins,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gifts_within_the_window_grow_one_combo_that_ends_once_when_it_lapses() {
        let mut c = Combos::new(WINDOW, 10);
        assert_eq!(c.gift("bob", "rose", 10, Instant::now()), (vec![], None));
        for n in 2..=4u32 {
            advance(Duration::from_millis(2_900)).await;
            let (ended, view) = c.gift("bob", "rose", 10, Instant::now());
            assert!(ended.is_empty());
            assert_eq!(
                view,
                Some(ComboView {
                    count: n,
                    total_coins: u64::from(n) * 10
                })
            );
        }
        advance(Duration::from_millis(2_999)).await;
        assert!(c.lapse(Instant::now()).is_empty());
        advance(Duration::from_millis(1)).await;
        assert_eq!(c.lapse(Instant::now()), vec![ended("bob", "rose", 4, 40)]);
        assert!(c.lapse(Instant::now()).is_empty());
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_gift_lapses_silently_and_a_late_gift_starts_afresh() {
        let mut c = Combos::new(WINDOW, 10);
        c.gift("bob", "rose", 10, Instant::now());
        advance(WINDOW).await;
        // Not lapsed by the ticker yet, but too late to continue.
        assert_eq!(c.gift("bob", "rose", 10, Instant::now()), (vec![], None));
        advance(WINDOW).await;
        assert!(c.lapse(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn another_sticker_ends_the_combo_at_once() {
        let mut c = Combos::new(WINDOW, 10);
        c.gift("bob", "rose", 10, Instant::now());
        c.gift("bob", "rose", 10, Instant::now());
        let (ended_now, view) = c.gift("bob", "coffee", 100, Instant::now());
        assert_eq!((ended_now, view), (vec![ended("bob", "rose", 2, 20)], None));
        // Other senders' combos are their own.
        c.gift("amy", "rose", 10, Instant::now());
        assert_eq!(
            c.gift("amy", "rose", 10, Instant::now()).1.unwrap().count,
            2
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.end_all(), vec![ended("amy", "rose", 2, 20)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_tracker_ends_the_stalest_sender() {
        let mut c = Combos::new(WINDOW, 2);
        c.gift("a", "rose", 1, Instant::now());
        c.gift("a", "rose", 1, Instant::now());
        advance(Duration::from_millis(10)).await;
        c.gift("b", "rose", 1, Instant::now());
        let (ended_now, _) = c.gift("c", "rose", 1, Instant::now());
        assert_eq!(ended_now, vec![ended("a", "rose", 2, 2)]);
        assert_eq!(c.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn restored_combos_continue_and_end_once() {
        let mut c = Combos::new(WINDOW, 10);
        let two = Some(ComboView {
            count: 2,
            total_coins: 20,
        });
        c.restore("bob", "rose", 10, None, Instant::now());
        c.restore("bob", "rose", 10, two, Instant::now());
        c.restore("amy", "rose", 10, None, Instant::now());
        c.restore("amy", "rose", 10, two, Instant::now());
        c.forget("amy", "rose");
        let (_, view) = c.gift("bob", "rose", 10, Instant::now());
        assert_eq!(view.unwrap().count, 3);
        advance(WINDOW).await;
        assert_eq!(c.lapse(Instant::now()), vec![ended("bob", "rose", 3, 30)]);
    }
}
