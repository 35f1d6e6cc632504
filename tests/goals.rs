//! Room goals through real WebSocket clients (docs/PROTOCOL.md §3, §4, §5): the streamer sets a
//! goal, committed gifts that count move it, the room sees coalesced `goal_progress`, one
//! `goal_reached`, and one `goal_ended` at the deadline, on `end_goal`, when replaced or when
//! the room closes. Progress always equals the coins the ledger committed for gifts that count.

mod mechanics;
mod support;

use std::time::Duration;

use mechanics::{check_goals, events_until, of};
use serde_json::{json, Value};
use support::{Client, TestServer};

/// A funded viewer in room `r`.
async fn viewer(server: &TestServer, user: &str, coins: u64) -> Client {
    server
        .top_up(user, "web", coins, &format!("p-{user}"))
        .await;
    let mut v = server.viewer(user).await;
    v.join("r").await;
    v
}

async fn set_goal(star: &mut Client, body: Value) -> Value {
    let mut body = body;
    body["type"] = json!("set_goal");
    star.ok(body).await
}

/// Reads the streamer's events until the one with `seq`.
async fn through(star: &mut Client, seq: u64) -> Vec<Value> {
    events_until(star, Duration::ZERO, |seen| {
        seen.last().is_some_and(|e| e["seq"].as_u64() >= Some(seq))
    })
    .await
}

#[tokio::test]
async fn gifts_move_the_goal_it_is_reached_once_and_progress_equals_the_ledger() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    let mut amy = viewer(&server, "amy", 1_000).await;
    let set = set_goal(&mut star, json!({ "target_coins": 300 })).await;
    let goal_id = set["seq"].as_u64().unwrap();
    assert_eq!(
        set["goal"],
        json!({ "goal_id": goal_id, "target_coins": 300, "progress_coins": 0, "reached": false })
    );
    // A member joining now sees the goal in its snapshot.
    let mut late = server.viewer("late").await;
    assert_eq!(late.join("r").await["goal"], set["goal"]);

    let mut last = 0;
    for k in 0..4 {
        let v = if k % 2 == 0 { &mut bob } else { &mut amy };
        last = v.send_gift("coffee", &format!("k{k}")).await.unwrap()["seq"]
            .as_u64()
            .unwrap();
    }
    let ended = star.ok(json!({ "type": "end_goal" })).await;
    let events = through(&mut star, ended["seq"].as_u64().unwrap()).await;
    assert!(ended["seq"].as_u64() > Some(last));
    let reached = of(&events, "goal_reached");
    assert_eq!(reached.len(), 1, "{events:?}");
    assert_eq!(reached[0]["goal"]["progress_coins"], 300);
    let end = of(&events, "goal_ended");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["reason"], "ended");
    assert_eq!(end[0]["goal"], ended["goal"]);
    let finals = check_goals(&events);
    // The ledger's view: what the viewers paid for the gifts that count.
    let paid = 2_000 - server.balance("bob").await - server.balance("amy").await;
    assert_eq!(finals[&goal_id], paid);
    assert_eq!(ended["goal"]["progress_coins"], paid);
    assert_eq!(ended["goal"]["reached"], true);

    // No goal now: the snapshot leaves it out and ending it again is an error.
    let mut later = server.viewer("later").await;
    assert!(later.join("r").await.get("goal").is_none());
    let e = star
        .request(json!({ "type": "end_goal" }))
        .await
        .unwrap_err();
    assert_eq!(
        (e["code"].clone(), e["reason"].clone()),
        (json!(13011), json!("goal_not_found"))
    );
    let outcome = "giftd_goals_total{outcome=\"reached\"}";
    assert_eq!(server.metric(outcome).await, 1.0);
}

#[tokio::test]
async fn progress_is_coalesced_by_the_room_ticker() {
    let server = TestServer::start_with(|c| c.rooms.viewer_count_interval_ms = 1_000).await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    set_goal(&mut star, json!({ "target_coins": 1_000 })).await;
    let started = tokio::time::Instant::now();
    for k in 0..20 {
        bob.send_gift("rose", &format!("k{k}")).await.unwrap();
    }
    let elapsed = started.elapsed();
    let events = events_until(&mut star, Duration::ZERO, |seen| {
        of(seen, "goal_progress")
            .last()
            .is_some_and(|e| e["goal"]["progress_coins"] == 20)
    })
    .await;
    let progress = of(&events, "goal_progress");
    // At most one per interval while the gifts went on, plus the one after them.
    let bound = elapsed.as_millis() / 1_000 + 2;
    assert!(
        (progress.len() as u128) <= bound && progress.len() < 20,
        "{} goal_progress events in {elapsed:?}",
        progress.len()
    );
    check_goals(&events);
}

#[tokio::test]
async fn two_goals_in_a_row_the_first_ends_replaced_and_only_later_gifts_move_the_second() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    let first = set_goal(&mut star, json!({ "target_coins": 50 })).await;
    bob.send_gift("clap", "k1").await.unwrap();
    let second = set_goal(&mut star, json!({ "target_coins": 50 })).await;
    bob.send_gift("heart", "k2").await.unwrap();
    let ended = star.ok(json!({ "type": "end_goal" })).await;
    let events = through(&mut star, ended["seq"].as_u64().unwrap()).await;
    let ends = of(&events, "goal_ended");
    assert_eq!(ends.len(), 2, "{events:?}");
    assert_eq!(ends[0]["reason"], "replaced");
    assert_eq!(ends[0]["goal"]["goal_id"], first["goal"]["goal_id"]);
    assert_eq!(ends[0]["goal"]["progress_coins"], 10);
    assert_eq!(
        ends[0]["seq"].as_u64().unwrap() + 1,
        second["seq"].as_u64().unwrap()
    );
    assert_eq!(ends[1]["goal"]["goal_id"], second["goal"]["goal_id"]);
    assert_eq!(ends[1]["goal"]["progress_coins"], 5);
    assert!(of(&events, "goal_reached").is_empty());
    let finals = check_goals(&events);
    assert_eq!(finals.len(), 2);
    let outcome = "giftd_goals_total{outcome=\"missed\"}";
    assert_eq!(server.metric(outcome).await, 2.0);
}

#[tokio::test]
async fn a_goal_with_a_sticker_counts_only_that_sticker() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    let set = set_goal(&mut star, json!({ "target_coins": 10, "sticker": "heart" })).await;
    assert_eq!(set["goal"]["sticker"], "heart");
    bob.send_gift("coffee", "k1").await.unwrap();
    bob.send_gift("heart", "k2").await.unwrap();
    bob.send_gift("rose", "k3").await.unwrap();
    let last = bob.send_gift("heart", "k4").await.unwrap();
    let events = through(&mut star, last["seq"].as_u64().unwrap() + 1).await;
    let reached = of(&events, "goal_reached");
    assert_eq!(reached.len(), 1, "{events:?}");
    assert_eq!(reached[0]["goal"]["progress_coins"], 10);
    assert_eq!(
        reached[0]["seq"].as_u64().unwrap(),
        last["seq"].as_u64().unwrap() + 1
    );
    check_goals(&events);
}

#[tokio::test]
async fn a_goal_ends_at_its_deadline_and_closing_the_room_ends_the_next() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    let set = set_goal(
        &mut star,
        json!({ "target_coins": 100, "duration_ms": 300 }),
    )
    .await;
    let deadline = set["goal"]["deadline_ms"].as_u64().unwrap();
    bob.send_gift("clap", "k1").await.unwrap();
    let events = events_until(&mut star, Duration::ZERO, |seen| {
        !of(seen, "goal_ended").is_empty()
    })
    .await;
    let end = of(&events, "goal_ended")[0];
    assert_eq!(end["reason"], "deadline");
    assert_eq!(end["goal"]["progress_coins"], 10);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now_ms >= deadline);
    check_goals(&events);

    set_goal(&mut star, json!({ "target_coins": 100 })).await;
    let closed = star.ok(json!({ "type": "close_room" })).await;
    let events = through(&mut star, closed["seq"].as_u64().unwrap()).await;
    let end = of(&events, "goal_ended");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["reason"], "room_closed");
    assert_eq!(
        end[0]["seq"].as_u64().unwrap() + 1,
        closed["seq"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn goal_commands_are_checked() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Goals").await;
    let mut bob = viewer(&server, "bob", 1_000).await;
    let reason = |r: Result<Value, Value>| r.unwrap_err()["reason"].clone();
    let e = bob
        .request(json!({ "type": "set_goal", "target_coins": 5 }))
        .await;
    assert_eq!(reason(e), "wrong_role");
    for (body, why) in [
        (json!({ "target_coins": 0 }), "invalid_amount"),
        (
            json!({ "target_coins": 5, "duration_ms": 0 }),
            "invalid_message",
        ),
        (
            json!({ "target_coins": 5, "duration_ms": 86_400_001 }),
            "invalid_message",
        ),
        (
            json!({ "target_coins": 5, "sticker": "nope" }),
            "unknown_sticker",
        ),
        (json!({ "target_coins": -1 }), "invalid_message"),
    ] {
        let mut body = body;
        body["type"] = json!("set_goal");
        assert_eq!(reason(star.request(body.clone()).await), why, "{body}");
    }
    let e = star.request(json!({ "type": "end_goal" })).await;
    assert_eq!(reason(e), "goal_not_found");
}
