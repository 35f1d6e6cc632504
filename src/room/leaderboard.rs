//! A room's leaderboards: its top gifters by coins, on three boards.
//!
//! - `session`: the gifts of the room's live session, since it opened;
//! - `window`: the room's gifts of the last `rooms.leaderboard_window_ms`, counted in 60 steps
//!   (one minute each with the default hour): a gift leaves the board when its step does;
//! - `all_time`: every gift ever made to the room's streamer, in any room. It is derived from the
//!   ledger (`gifter_totals`, which the database maintains in the same transaction as each gift),
//!   so it survives restarts and agrees with the ledger exactly; the room keeps only its top N,
//!   refreshed by the room ticker after gifts, at most once per
//!   `rooms.leaderboard_all_time_interval_ms` ([`Boards::all_time_due`]).
//!
//! The session and window boards live in the room's sequencer state, touched only under the
//! room's lock, and count every gift (and paid question) the room publishes, after the ledger
//! committed it. A node that takes a room over rebuilds them from the ledger
//! ([`Boards::restore`]), so they survive the death of the owner too.
//!
//! Order: more coins first; equal coins rank by user id in ascending byte order (the documented
//! tie-break, the same on every board and in the ledger's queries). The room publishes a board's
//! top N as a `leaderboard` event only when it changed, at most once per ticker beat
//! (`rooms.viewer_count_interval_ms`), never once per gift.
//!
//! Bounds: a board tracks at most `rooms.leaderboard_senders_max` senders; once full, a sender not
//! yet on it is not ranked on that board (counted by `giftd_leaderboard_senders_untracked_total`).
//! The all-time board has no such limit.

use std::collections::{HashMap, VecDeque};

use crate::config::RoomsConfig;
use crate::protocol::server::{Board, BoardsView, Ranked};

/// A step longer than any clock reading: [`crate::ledger::Ledger::room_gifts_since`] with it
/// gives each sender's sum in one row.
pub const ONE_STEP_MS: u64 = i64::MAX as u64;

/// Steps of the rolling window.
const WINDOW_STEPS: u64 = 60;

/// Whether `a` ranks ahead of `b`: more coins, then the smaller user id.
fn ahead(a: (&str, u64), b: (&str, u64)) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

/// Coins per sender, bounded by a number of senders.
#[derive(Debug, Default)]
struct Tally {
    coins: HashMap<String, u64>,
}

impl Tally {
    /// Adds coins to a sender; false if the sender is new and the tally is full.
    fn add(&mut self, user: &str, coins: u64, senders_max: usize) -> bool {
        if let Some(c) = self.coins.get_mut(user) {
            *c = c.checked_add(coins).expect("a gifter's coins fit in u64");
            return true;
        }
        if self.coins.len() >= senders_max {
            return false;
        }
        self.coins.insert(user.to_owned(), coins);
        true
    }

    /// Takes back coins added earlier (a window step leaving the window).
    fn sub(&mut self, user: &str, coins: u64) {
        let c = self
            .coins
            .get_mut(user)
            .expect("a window step holds only tracked senders");
        *c = c
            .checked_sub(coins)
            .expect("a window never takes back more than it added");
        if *c == 0 {
            self.coins.remove(user);
        }
    }

    /// Every sender in board order.
    fn sorted(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.coins.iter().map(|(u, c)| (u.as_str(), *c)).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all
    }

    /// The first `n` in board order, without sorting everyone.
    fn top(&self, n: usize) -> Vec<Ranked> {
        let mut best: Vec<(&str, u64)> = Vec::with_capacity(n + 1);
        for (user, coins) in &self.coins {
            let entry = (user.as_str(), *coins);
            if best.len() == n && !best.last().is_some_and(|&last| ahead(entry, last)) {
                continue;
            }
            let at = best.partition_point(|&b| ahead(b, entry));
            best.insert(at, entry);
            best.truncate(n);
        }
        ranked(best.into_iter().enumerate())
    }

    /// `user`'s entry with up to `neighbours` entries on each side; empty if not on the board.
    fn around(&self, user: &str, neighbours: usize) -> Vec<Ranked> {
        if !self.coins.contains_key(user) {
            return Vec::new();
        }
        let all = self.sorted();
        let at = all
            .iter()
            .position(|(u, _)| *u == user)
            .expect("the user is on the board");
        let from = at.saturating_sub(neighbours);
        let to = (at + neighbours + 1).min(all.len());
        ranked(
            all[from..to]
                .iter()
                .copied()
                .enumerate()
                .map(|(i, e)| (from + i, e)),
        )
    }
}

fn ranked<'a>(entries: impl Iterator<Item = (usize, (&'a str, u64))>) -> Vec<Ranked> {
    entries
        .map(|(i, (user, coins))| Ranked {
            rank: i as u64 + 1,
            user: user.to_owned(),
            coins,
        })
        .collect()
}

/// The room's boards and what the room was last told of them.
#[derive(Debug)]
pub struct Boards {
    session: Tally,
    window: Tally,
    /// The window's steps, oldest first: the step's number (`at_ms / step_ms`) and its coins per
    /// sender.
    steps: VecDeque<(u64, HashMap<String, u64>)>,
    step_ms: u64,
    all_time: Vec<Ranked>,
    /// Gifts were published since the all-time board was last read from the ledger.
    all_time_stale: bool,
    /// When the all-time board was last read (Unix ms), and how often it may be.
    all_time_read_ms: Option<u64>,
    all_time_interval_ms: u64,
    /// Each board's top N as the room last published it.
    published: [Vec<Ranked>; 3],
    /// Boards that changed since they were last compared with what was published: only those
    /// are ranked again on the next beat.
    dirty: [bool; 3],
    top_n: usize,
    senders_max: usize,
}

impl Boards {
    pub fn new(config: &RoomsConfig) -> Boards {
        Boards {
            session: Tally::default(),
            window: Tally::default(),
            steps: VecDeque::new(),
            step_ms: (config.leaderboard_window_ms / WINDOW_STEPS).max(1),
            all_time: Vec::new(),
            all_time_stale: true,
            all_time_read_ms: None,
            all_time_interval_ms: config.leaderboard_all_time_interval_ms,
            published: Default::default(),
            dirty: [false; 3],
            top_n: config.leaderboard_top_n,
            senders_max: config.leaderboard_senders_max,
        }
    }

    /// Counts a committed gift at `at_ms`; returns how many boards could not track a new sender.
    pub fn gift(&mut self, user: &str, coins: u64, at_ms: u64) -> u32 {
        assert!(coins > 0, "a gift has a price");
        self.all_time_stale = true;
        self.dirty[Board::Session.index()] = true;
        self.dirty[Board::Window.index()] = true;
        let mut untracked = 0;
        if !self.session.add(user, coins, self.senders_max) {
            untracked += 1;
        }
        if self.window.add(user, coins, self.senders_max) {
            let step = at_ms / self.step_ms;
            if self.steps.back().is_none_or(|(s, _)| *s < step) {
                self.steps.push_back((step, HashMap::new()));
            }
            // A gift stamped before the newest step (a clock step back) joins the newest step.
            let (_, coins_by_user) = self.steps.back_mut().expect("pushed above");
            *coins_by_user.entry(user.to_owned()).or_insert(0) += coins;
        } else {
            untracked += 1;
        }
        untracked
    }

    /// Drops the window's steps that left it by `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let first_kept = (now_ms / self.step_ms).saturating_sub(WINDOW_STEPS - 1);
        while self.steps.front().is_some_and(|(s, _)| *s < first_kept) {
            let (_, coins_by_user) = self.steps.pop_front().expect("checked above");
            for (user, coins) in coins_by_user {
                self.window.sub(&user, coins);
            }
            self.dirty[Board::Window.index()] = true;
        }
    }

    /// Rebuilds the session and window boards from the ledger's gifts in the room (after a
    /// takeover): `(sender, at_ms, coins)` rows of the session since it opened, and of the window
    /// by step ([`crate::ledger::Ledger::room_gifts_since`]).
    pub fn restore(
        &mut self,
        session: &[(String, u64, u64)],
        window: &[(String, u64, u64)],
        now_ms: u64,
    ) {
        self.session = Tally::default();
        self.window = Tally::default();
        self.steps.clear();
        for (user, _, coins) in session {
            self.session.add(user, *coins, self.senders_max);
        }
        let mut window: Vec<&(String, u64, u64)> = window.iter().collect();
        window.sort_unstable_by_key(|(_, at, _)| *at);
        let window_from = self.window_start_ms(now_ms);
        for (user, at_ms, coins) in window {
            if *at_ms >= window_from && self.window.add(user, *coins, self.senders_max) {
                let step = at_ms / self.step_ms;
                if self.steps.back().is_none_or(|(s, _)| *s < step) {
                    self.steps.push_back((step, HashMap::new()));
                }
                let (_, coins_by_user) = self.steps.back_mut().expect("pushed above");
                *coins_by_user.entry(user.clone()).or_insert(0) += coins;
            }
        }
        self.all_time_stale = true;
        self.dirty = [true; 3];
    }

    /// Whether the all-time board should be read from the ledger again at `now_ms`: gifts came
    /// since the last read, and the last read is at least the interval old. Clears the mark.
    pub fn all_time_due(&mut self, now_ms: u64) -> bool {
        let rested = self
            .all_time_read_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.all_time_interval_ms);
        if !(self.all_time_stale && rested) {
            return false;
        }
        self.all_time_stale = false;
        self.all_time_read_ms = Some(now_ms);
        true
    }

    /// Marks the all-time board for another read (the last one failed).
    pub fn all_time_retry(&mut self) {
        self.all_time_stale = true;
    }

    /// The all-time top N as the ledger just gave it.
    pub fn set_all_time(&mut self, top: Vec<Ranked>) {
        self.all_time = top;
        self.all_time.truncate(self.top_n);
        self.dirty[Board::AllTime.index()] = true;
    }

    pub fn top_n(&self) -> usize {
        self.top_n
    }

    pub fn step_ms(&self) -> u64 {
        self.step_ms
    }

    /// Where the window board begins at `now_ms`: the start of its oldest step.
    pub fn window_start_ms(&self, now_ms: u64) -> u64 {
        (now_ms / self.step_ms).saturating_sub(WINDOW_STEPS - 1) * self.step_ms
    }

    /// A board's top N now (the all-time one as last read from the ledger).
    pub fn top(&self, board: Board) -> Vec<Ranked> {
        match board {
            Board::Session => self.session.top(self.top_n),
            Board::Window => self.window.top(self.top_n),
            Board::AllTime => self.all_time.clone(),
        }
    }

    /// `user` and up to `neighbours` on each side on the session or window board.
    pub fn around(&self, board: Board, user: &str, neighbours: usize) -> Vec<Ranked> {
        match board {
            Board::Session => self.session.around(user, neighbours),
            Board::Window => self.window.around(user, neighbours),
            Board::AllTime => unreachable!("the all-time board is read from the ledger"),
        }
    }

    pub fn view(&self) -> BoardsView {
        BoardsView {
            session: self.top(Board::Session),
            window: self.top(Board::Window),
            all_time: self.top(Board::AllTime),
        }
    }

    /// The boards whose top N changed since the room last published them, now marked published.
    pub fn changed(&mut self) -> Vec<(Board, Vec<Ranked>)> {
        let mut changed = Vec::new();
        for board in Board::ALL {
            if !std::mem::take(&mut self.dirty[board.index()]) {
                continue;
            }
            let top = self.top(board);
            if top != self.published[board.index()] {
                self.published[board.index()] = top.clone();
                changed.push((board, top));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn boards(top_n: usize, senders_max: usize) -> Boards {
        Boards::new(&RoomsConfig {
            leaderboard_top_n: top_n,
            leaderboard_senders_max: senders_max,
            leaderboard_window_ms: 60_000,
            ..RoomsConfig::default()
        })
    }

    fn users(top: &[Ranked]) -> Vec<(&str, u64)> {
        top.iter().map(|r| (r.user.as_str(), r.coins)).collect()
    }

    #[test]
    fn ties_rank_by_user_id_and_ranks_are_distinct() {
        let mut b = boards(3, 100);
        b.gift("carol", 50, 0);
        b.gift("bob", 50, 0);
        b.gift("amy", 20, 0);
        b.gift("amy", 30, 0);
        b.gift("dan", 10, 0);
        let top = b.top(Board::Session);
        assert_eq!(users(&top), [("amy", 50), ("bob", 50), ("carol", 50)]);
        assert_eq!(top.iter().map(|r| r.rank).collect::<Vec<_>>(), [1, 2, 3]);
        let around = b.around(Board::Session, "dan", 1);
        assert_eq!(users(&around), [("carol", 50), ("dan", 10)]);
        assert_eq!(around[1].rank, 4);
        assert!(b.around(Board::Session, "eve", 2).is_empty());
    }

    #[test]
    fn the_window_forgets_gifts_step_by_step_and_the_session_keeps_them() {
        // A 60 s window: 60 steps of 1 s.
        let mut b = boards(10, 100);
        b.gift("amy", 10, 1_000);
        b.gift("bob", 5, 30_000);
        b.expire(60_999);
        assert_eq!(users(&b.top(Board::Window)), [("amy", 10), ("bob", 5)]);
        b.expire(61_000);
        assert_eq!(users(&b.top(Board::Window)), [("bob", 5)]);
        b.expire(90_000);
        assert!(b.top(Board::Window).is_empty());
        assert_eq!(users(&b.top(Board::Session)), [("amy", 10), ("bob", 5)]);
    }

    #[test]
    fn a_full_board_does_not_rank_new_senders_but_keeps_counting_known_ones() {
        let mut b = boards(10, 2);
        assert_eq!(b.gift("amy", 1, 0), 0);
        assert_eq!(b.gift("bob", 1, 0), 0);
        assert_eq!(b.gift("carol", 100, 0), 2);
        assert_eq!(b.gift("amy", 5, 0), 0);
        assert_eq!(users(&b.top(Board::Session)), [("amy", 6), ("bob", 1)]);
    }

    #[test]
    fn a_board_is_published_only_when_its_top_changed() {
        let mut b = boards(1, 100);
        b.gift("amy", 10, 0);
        let changed: Vec<Board> = b.changed().into_iter().map(|(k, _)| k).collect();
        assert_eq!(changed, [Board::Session, Board::Window]);
        // bob is not in the top 1: nothing to publish.
        b.gift("bob", 5, 0);
        assert!(b.changed().is_empty());
        b.set_all_time(vec![Ranked {
            rank: 1,
            user: "amy".into(),
            coins: 99,
        }]);
        assert_eq!(b.changed().len(), 1);
    }

    #[test]
    fn the_all_time_board_is_read_after_gifts_and_at_most_once_per_interval() {
        let mut b = Boards::new(&RoomsConfig {
            leaderboard_all_time_interval_ms: 5_000,
            ..RoomsConfig::default()
        });
        assert!(b.all_time_due(1_000), "a new room reads it once");
        assert!(!b.all_time_due(9_000), "no gift since");
        b.gift("amy", 1, 9_000);
        assert!(b.all_time_due(9_000));
        b.gift("amy", 1, 9_100);
        assert!(!b.all_time_due(13_999), "read 4.999 s ago");
        assert!(b.all_time_due(14_000));
        b.all_time_retry();
        assert!(
            !b.all_time_due(14_500),
            "a failed read waits for the interval too"
        );
        assert!(b.all_time_due(19_000));
    }

    #[test]
    fn restore_rebuilds_both_boards_from_the_ledger_rows() {
        let mut live = boards(10, 100);
        let rows = vec![
            ("amy".to_string(), 5_000, 10),
            ("bob".to_string(), 20_000, 7),
            ("amy".to_string(), 70_000, 4),
        ];
        for (user, at, coins) in &rows {
            live.gift(user, *coins, *at);
        }
        live.expire(80_000);
        let mut restored = boards(10, 100);
        // The session opened at 10 s: amy's first gift belongs to an earlier session.
        let session: Vec<(String, u64, u64)> = vec![("bob".into(), 0, 7), ("amy".into(), 0, 4)];
        restored.restore(&session, &rows, 80_000);
        assert_eq!(
            users(&restored.top(Board::Window)),
            users(&live.top(Board::Window))
        );
        assert_eq!(
            users(&restored.top(Board::Session)),
            [("bob", 7), ("amy", 4)]
        );
    }

    proptest! {
        /// The top N is the first N of the fully sorted board, and every sender's coins are the
        /// sum of their gifts.
        #[test]
        fn top_is_a_prefix_of_the_sorted_board(
            gifts in prop::collection::vec((0u8..12, 1u64..1_000), 0..200),
            n in 1usize..8,
        ) {
            let mut b = boards(n, 1_000);
            let mut sums: HashMap<String, u64> = HashMap::new();
            for (u, c) in &gifts {
                let user = format!("u{u}");
                b.gift(&user, *c, 0);
                *sums.entry(user).or_insert(0) += c;
            }
            let mut expected: Vec<(String, u64)> = sums.into_iter().collect();
            expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            expected.truncate(n);
            let top: Vec<(String, u64)> =
                b.top(Board::Session).into_iter().map(|r| (r.user, r.coins)).collect();
            prop_assert_eq!(top, expected);
        }
    }
}
