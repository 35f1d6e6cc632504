//! Leaderboards through real WebSocket clients (docs/PROTOCOL.md §4, §5): the room's `session`,
//! `window` and `all_time` boards in the join snapshot, in coalesced `leaderboard` events and on
//! the `leaderboard` command, with the documented tie-break (equal coins by user id). The
//! all-time board is checked against the ledger's own sums, on both backends, across a room
//! closing and a server restart.

mod mechanics;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use mechanics::{events_until, of};
use serde_json::{json, Value};
use support::ledger::LedgerDb;
use support::{Client, TestServer};

/// `(user, coins)` pairs of a board as the wire shows it, checking its ranks are 1, 2, ...
fn board(top: &Value) -> Vec<(String, u64)> {
    let entries = top.as_array().unwrap_or_else(|| panic!("no board: {top}"));
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            assert_eq!(e["rank"].as_u64(), Some(i as u64 + 1), "{top}");
            (
                e["user"].as_str().unwrap().to_owned(),
                e["coins"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The board `sums` make: more coins first, equal coins by user id.
fn ranked(sums: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = sums.iter().map(|(u, c)| (u.clone(), *c)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all
}

/// Every `leaderboard` event of the session board shows exactly the coins of the gifts (and paid
/// questions) published before it in the room's order. Returns the final sums.
fn check_session_boards(events: &[Value]) -> HashMap<String, u64> {
    let mut sums: HashMap<String, u64> = HashMap::new();
    for e in events {
        match e["kind"].as_str().unwrap() {
            "gift" => {
                *sums.entry(e["from"].as_str().unwrap().into()).or_default() +=
                    e["price_coins"].as_u64().unwrap();
            }
            "question" if e["paid"].is_object() => {
                *sums.entry(e["from"].as_str().unwrap().into()).or_default() +=
                    e["paid"]["price_coins"].as_u64().unwrap();
            }
            "leaderboard" if e["board"] == "session" => {
                assert_eq!(board(&e["top"]), ranked(&sums), "{e}");
            }
            _ => {}
        }
    }
    sums
}

/// The all-time board of `streamer` as the ledger's gifts give it.
async fn ledger_board(db: &LedgerDb, streamer: &str) -> Vec<(String, u64)> {
    let rows = db
        .rows(&format!(
            "SELECT sender, SUM(price_coins) FROM gifts WHERE streamer = '{streamer}' GROUP BY sender"
        ))
        .await;
    let sums = rows
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    ranked(&sums)
}

async fn leaderboard(client: &mut Client, body: Value) -> Value {
    let mut body = body;
    body["type"] = json!("leaderboard");
    client.ok(body).await
}

/// A funded viewer in `room`.
async fn viewer(server: &TestServer, user: &str, room: &str) -> Client {
    server
        .top_up(user, "web", 10_000, &format!("p-{user}"))
        .await;
    let mut v = server.viewer(user).await;
    v.join(room).await;
    v
}

on_both_ledgers! {
    #[tokio::test]
    async fn boards_rank_gifters_coalesced_and_the_all_time_board_agrees_with_the_ledger() {
        // The all-time board is read as often as the config allows, so the events show it soon.
        let server = TestServer::start_with(|c| c.rooms.leaderboard_all_time_interval_ms = 500).await;
        let db = LedgerDb::open(&server.config).await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "Boards").await;
        let mut amy = viewer(&server, "amy", "r").await;
        let mut bob = viewer(&server, "bob", "r").await;
        let mut cat = viewer(&server, "cat", "r").await;

        // amy and bob tie at 200 coins (amy ranks first by user id); cat's paid question counts.
        let mut sent = Vec::new();
        for k in 0..2 {
            sent.push(amy.send(json!({ "type": "send_gift", "sticker": "coffee", "key": format!("a{k}") })).await);
        }
        let bob_ids = [
            bob.send(json!({ "type": "send_gift", "sticker": "coffee", "key": "b0" })).await,
            bob.send(json!({ "type": "send_gift", "sticker": "coffee", "key": "b1" })).await,
        ];
        for k in 0..3 {
            cat.ok(json!({ "type": "send_gift", "sticker": "clap", "key": format!("c{k}") })).await;
        }
        cat.ok(json!({ "type": "ask", "text": "Favourite song?", "sticker": "heart", "key": "q" }))
            .await;
        for id in sent {
            amy.reply(id).await.unwrap();
        }
        for id in bob_ids {
            bob.reply(id).await.unwrap();
        }
        let expected = vec![
            ("amy".to_owned(), 200),
            ("bob".to_owned(), 200),
            ("cat".to_owned(), 35),
        ];

        // The room sees each board when its top changed, coalesced, never per gift; every session
        // board shows exactly the gifts before it, and the all-time board follows the ledger.
        let events = events_until(&mut star, Duration::ZERO, |seen| {
            let last = |name: &str| {
                of(seen, "leaderboard")
                    .into_iter()
                    .rev()
                    .find(|e| e["board"] == name)
                    .map(|e| board(&e["top"]))
            };
            last("session").as_ref() == Some(&expected)
                && last("window").as_ref() == Some(&expected)
                && last("all_time").as_ref() == Some(&expected)
        })
        .await;
        check_session_boards(&events);
        let counted = of(&events, "gift").len() + 1;
        let session_events = of(&events, "leaderboard")
            .iter()
            .filter(|e| e["board"] == "session")
            .count();
        assert!(session_events < counted, "{session_events} boards for {counted} gifts");

        // The command: a board's top N, and a user's rank with their neighbours.
        let session = leaderboard(&mut cat, json!({ "board": "session", "around": "cat" })).await;
        assert_eq!(board(&session["top"]), expected);
        assert_eq!(session["around"], session["top"], "cat's 2 neighbours are the whole board");
        let nobody = leaderboard(&mut cat, json!({ "board": "window", "around": "dan" })).await;
        assert_eq!(nobody["around"], json!([]));
        assert!(leaderboard(&mut cat, json!({ "board": "window" })).await.get("around").is_none());
        let all_time = leaderboard(&mut amy, json!({ "board": "all_time", "around": "bob" })).await;
        assert_eq!(board(&all_time["top"]), ledger_board(&db, "star").await);
        assert_eq!(
            all_time["around"][1],
            json!({ "rank": 2, "user": "bob", "coins": 200 })
        );

        // A member joining now finds the boards in its snapshot.
        let mut late = server.viewer("late").await;
        let snapshot = late.join("r").await;
        for name in ["session", "window", "all_time"] {
            assert_eq!(board(&snapshot["leaderboards"][name]), expected, "{snapshot}");
        }

        // A new session starts with an empty session board; the all-time board keeps every gift.
        star.ok(json!({ "type": "close_room" })).await;
        star.open_room("r2", "Again").await;
        let mut amy = server.viewer("amy").await;
        let snapshot = amy.join("r2").await;
        assert_eq!(snapshot["leaderboards"]["session"], json!([]));
        amy.send_gift("star", "a9").await.unwrap();
        let all_time = leaderboard(&mut amy, json!({ "board": "all_time" })).await;
        assert_eq!(board(&all_time["top"])[0], ("amy".to_owned(), 700));
        assert_eq!(board(&all_time["top"]), ledger_board(&db, "star").await);
        let session = leaderboard(&mut amy, json!({ "board": "session" })).await;
        assert_eq!(board(&session["top"]), [("amy".to_owned(), 500)]);

        // It survives a restart: derived from the ledger, not from the node's memory.
        let before = ledger_board(&db, "star").await;
        drop((star, amy, bob, cat, late));
        let server = server.restart().await;
        let mut star = server.streamer("star").await;
        star.open_room("r3", "After the restart").await;
        let all_time = leaderboard(&mut star, json!({ "board": "all_time" })).await;
        assert_eq!(board(&all_time["top"]), before);
        assert!(db.audit().await.violations.is_empty());
    }
}

#[tokio::test]
async fn bad_leaderboard_requests_get_stable_codes_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    let mut amy = server.viewer("amy").await;
    let e = amy
        .request(json!({ "type": "leaderboard", "board": "session" }))
        .await
        .unwrap_err();
    assert_eq!(e["reason"], "not_in_room", "{e}");
    star.open_room("r", "Boards").await;
    amy.join("r").await;
    for body in [
        json!({ "type": "leaderboard", "board": "weekly" }),
        json!({ "type": "leaderboard" }),
        json!({ "type": "leaderboard", "board": "session", "around": "not a user id" }),
        json!({ "type": "leaderboard", "board": "session", "around": 7 }),
    ] {
        let e = amy.request(body.clone()).await.unwrap_err();
        assert_eq!(e["reason"], "invalid_message", "{body}: {e}");
    }
    let empty = amy
        .ok(json!({ "type": "leaderboard", "board": "all_time", "around": "amy" }))
        .await;
    assert_eq!(
        empty,
        json!({ "board": "all_time", "top": [], "around": [] })
    );
    amy.ok(json!({ "type": "ping" })).await;
}
