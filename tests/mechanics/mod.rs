//! Checks of the room mechanics (combos and goals) over the events a member saw, in `seq`
//! order, shared by `tests/combos.rs` and `tests/goals.rs`. Each check replays the events with
//! the rules of docs/PROTOCOL.md §4 and panics on the first event that breaks them.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::Client;

/// What the combo check found.
#[derive(Debug, Default)]
pub struct ComboTally {
    /// `combo_end` events, each matching a run of two or more gifts.
    pub ended: Vec<(String, String, u64, u64)>,
    /// Runs of two or more gifts that have not ended (yet).
    pub open: usize,
}

/// Replays `events`: every gift's `combo` continues its sender's run exactly, and every run of
/// two or more gifts ends with exactly one matching `combo_end`, before the sender's next run.
pub fn check_combos(events: &[Value]) -> ComboTally {
    assert_gap_free(events);
    // sender -> (sticker, count, total_coins)
    let mut runs: HashMap<String, (String, u64, u64)> = HashMap::new();
    let mut tally = ComboTally::default();
    for e in events {
        match e["kind"].as_str().unwrap() {
            "gift" => {
                let from = e["from"].as_str().unwrap().to_owned();
                let sticker = e["sticker"].as_str().unwrap().to_owned();
                let price = e["price_coins"].as_u64().unwrap();
                match e.get("combo") {
                    Some(combo) => {
                        let run = runs.get_mut(&from).unwrap_or_else(|| panic!("{e}: no run"));
                        assert_eq!(run.0, sticker, "{e}");
                        run.1 += 1;
                        run.2 += price;
                        assert_eq!(combo["count"].as_u64(), Some(run.1), "{e}");
                        assert_eq!(combo["total_coins"].as_u64(), Some(run.2), "{e}");
                    }
                    None => {
                        if let Some(run) = runs.get(&from) {
                            assert!(run.1 < 2, "{e}: a combo {run:?} did not end first");
                        }
                        runs.insert(from, (sticker, 1, price));
                    }
                }
            }
            "combo_end" => {
                let from = e["from"].as_str().unwrap().to_owned();
                let run = runs
                    .remove(&from)
                    .unwrap_or_else(|| panic!("{e}: no combo"));
                let got = (
                    e["sticker"].as_str().unwrap().to_owned(),
                    e["count"].as_u64().unwrap(),
                    e["total_coins"].as_u64().unwrap(),
                );
                assert!(run.1 >= 2, "{e}: a lone gift is no combo");
                assert_eq!(got, run, "{e}");
                tally.ended.push((from, got.0, got.1, got.2));
            }
            "room_closed" => {
                assert!(runs.values().all(|r| r.1 < 2), "combos open at close");
            }
            _ => {}
        }
    }
    tally.open = runs.values().filter(|r| r.1 >= 2).count();
    tally
}

/// Replays `events`: every goal event shows exactly the coins of the gifts that count published
/// since its `goal_set` (never more), `goal_reached` comes once, right after the crossing gift,
/// and a goal ends at most once. Returns each goal's final progress, by goal id.
pub fn check_goals(events: &[Value]) -> HashMap<u64, u64> {
    check_goals_after(None, events)
}

/// [`check_goals`] for a member that joined with `snapshot_goal` (its snapshot's `goal`).
pub fn check_goals_after(snapshot_goal: Option<&Value>, events: &[Value]) -> HashMap<u64, u64> {
    assert_gap_free(events);
    // (goal id, target, sticker, progress, reached)
    let mut goal: Option<(u64, u64, Option<String>, u64, bool)> = snapshot_goal.map(|v| {
        (
            v["goal_id"].as_u64().unwrap(),
            v["target_coins"].as_u64().unwrap(),
            v["sticker"].as_str().map(str::to_owned),
            v["progress_coins"].as_u64().unwrap(),
            v["reached"].as_bool().unwrap(),
        )
    });
    let mut finals = HashMap::new();
    let mut crossed_at: Option<u64> = None;
    for e in events {
        let seq = e["seq"].as_u64().unwrap();
        let kind = e["kind"].as_str().unwrap();
        match kind {
            "gift" | "question" => {
                let (sticker, price) = if kind == "gift" {
                    (e["sticker"].as_str(), e["price_coins"].as_u64())
                } else {
                    (
                        e["paid"]["sticker"].as_str(),
                        e["paid"]["price_coins"].as_u64(),
                    )
                };
                let (Some(sticker), Some(price), Some(g)) = (sticker, price, goal.as_mut()) else {
                    continue;
                };
                if g.2.as_deref().is_none_or(|s| s == sticker) {
                    g.3 += price;
                    if !g.4 && g.3 >= g.1 {
                        g.4 = true;
                        crossed_at = Some(seq);
                    }
                }
            }
            "goal_set" | "goal_progress" | "goal_reached" | "goal_ended" => {
                let v = &e["goal"];
                let id = v["goal_id"].as_u64().unwrap();
                if kind == "goal_set" {
                    assert!(goal.is_none(), "{e}: the previous goal did not end first");
                    assert_eq!(id, seq, "{e}: a goal's id is its goal_set's seq");
                    goal = Some((
                        id,
                        v["target_coins"].as_u64().unwrap(),
                        v["sticker"].as_str().map(str::to_owned),
                        0,
                        false,
                    ));
                }
                let g = goal.as_ref().unwrap_or_else(|| panic!("{e}: no goal"));
                assert_eq!(id, g.0, "{e}");
                assert_eq!(v["progress_coins"].as_u64(), Some(g.3), "{e}");
                if kind == "goal_reached" {
                    assert_eq!(crossed_at.take().map(|s| s + 1), Some(seq), "{e}");
                }
                assert_eq!(
                    v["reached"].as_bool(),
                    Some(g.4 && crossed_at.is_none()),
                    "{e}"
                );
                if kind == "goal_ended" {
                    finals.insert(id, g.3);
                    goal = None;
                }
            }
            _ => {}
        }
    }
    finals
}

pub fn assert_gap_free(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or duplicate in {seqs:?}");
    }
}

/// Reads events until `done` holds for the events so far, then for `quiet` more (which must
/// bring nothing but viewer counts, goal progress and what `done` allows). Returns them all.
pub async fn events_until(
    client: &mut Client,
    quiet: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    // Bounded: each read waits at most the client's own timeout.
    for _ in 0..100_000 {
        if done(&seen) {
            break;
        }
        seen.push(client.next_event().await);
    }
    assert!(done(&seen), "never done: {seen:?}");
    let until = tokio::time::Instant::now() + quiet;
    while let Ok(e) = tokio::time::timeout_at(until, client.next_event()).await {
        seen.push(e);
    }
    seen
}

/// The events of `kind`.
pub fn of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// What [`check_pk`] found in one room's events: each battle's `pk_ended` record.
#[derive(Debug, Default)]
pub struct PkTally {
    pub ended: Vec<Value>,
}

/// The battle a room shows, as [`check_pk`] replays it.
struct ShownPk {
    id: String,
    /// 0 invited, 1 active, 2 ended.
    rank: u8,
    /// (challenger, opponent)
    scores: (u64, u64),
    /// The coins of this room's gifts published since `pk_started`.
    coins: Option<u64>,
}

/// Replays one room's `events` (`room` is the room): each battle is shown in order
/// (`pk_invite`, then `pk_started`, `pk_score`s, then exactly one `pk_ended`, nothing after), the
/// scores never go down, and this room's score in `pk_ended` equals the coins of the gifts (and
/// paid questions) published in this room between `pk_started` and `pk_ended`. Tests call it on
/// events where gifts do not race the battle's start or end. The scores in between are not
/// compared with the gifts: each is the ledger's as of one read per beat, and a read may land
/// between a gift's commit and its event, so a `pk_score` may count a gift whose event follows it,
/// or miss one whose event came first (PROTOCOL.md §4); the scores only have to climb to the
/// final one.
pub fn check_pk(room: &str, events: &[Value]) -> PkTally {
    assert_gap_free(events);
    let mut tally = PkTally::default();
    let mut ended: Vec<String> = Vec::new();
    let mut shown: Option<ShownPk> = None;
    for e in events {
        let kind = e["kind"].as_str().unwrap();
        match kind {
            "gift" | "question" => {
                let price = if kind == "gift" {
                    e["price_coins"].as_u64()
                } else {
                    e["paid"]["price_coins"].as_u64()
                };
                if let (
                    Some(p),
                    Some(ShownPk {
                        coins: Some(coins), ..
                    }),
                ) = (price, shown.as_mut())
                {
                    *coins += p;
                }
                continue;
            }
            "pk_invite" | "pk_started" | "pk_score" | "pk_ended" => {}
            _ => continue,
        }
        let b = &e["battle"];
        let id = b["battle_id"].as_str().unwrap().to_owned();
        assert!(
            !ended.contains(&id),
            "{e}: an event after the battle's pk_ended"
        );
        let scores = (
            b["challenger"]["score_coins"].as_u64().unwrap(),
            b["opponent"]["score_coins"].as_u64().unwrap(),
        );
        let own = if b["challenger"]["room"] == room {
            scores.0
        } else {
            assert_eq!(b["opponent"]["room"], room, "{e}: not this room's battle");
            scores.1
        };
        let rank = match kind {
            "pk_invite" => 0,
            "pk_started" | "pk_score" => 1,
            _ => 2,
        };
        match shown.as_mut() {
            Some(s) if s.id == id => {
                assert!(rank >= s.rank, "{e}: out of order");
                assert!(kind != "pk_started" || s.rank == 0, "{e}: started twice");
                assert!(
                    scores.0 >= s.scores.0 && scores.1 >= s.scores.1,
                    "{e}: a score went down"
                );
                if kind == "pk_started" {
                    s.coins = Some(0);
                }
                if let (Some(coins), "pk_ended") = (s.coins, kind) {
                    assert_eq!(own, coins, "{e}: this room's final score is not its gifts");
                }
                s.rank = rank;
                s.scores = scores;
            }
            Some(s) => panic!("{e}: a new battle while {} is shown", s.id),
            None => {
                assert!(kind != "pk_score", "{e}: scores of a battle never shown");
                shown = Some(ShownPk {
                    id: id.clone(),
                    rank,
                    scores,
                    coins: (kind == "pk_started").then_some(0),
                });
            }
        }
        if kind == "pk_ended" {
            assert!(b["reason"].is_string(), "{e}");
            ended.push(id);
            tally.ended.push(b.clone());
            shown = None;
        }
    }
    tally
}
