//! PK battles through real WebSocket clients (docs/PROTOCOL.md §3, §4, §5), on both ledger
//! backends: one streamer challenges another's room, the other accepts or declines, gifts in
//! each room add to its score, both rooms see the same scores and exactly one `pk_ended` with
//! the ledger's result; a streamer who leaves, or a room that closes, forfeits; a challenge
//! nobody answers expires. Every score equals the coins of the gifts the ledger committed in
//! that room during the battle.

mod mechanics;
mod support;

use std::time::Duration;

use mechanics::{check_pk, events_until, of};
use serde_json::{json, Value};
use support::ledger::{lit, LedgerDb};
use support::{Client, TestServer};

const BATTLE_MS: u64 = 3_000;

async fn start(answer_ms: u64) -> TestServer {
    TestServer::start_with(|c| {
        c.rooms.pk_duration_ms = BATTLE_MS;
        c.rooms.pk_answer_ms = answer_ms;
    })
    .await
}

/// Streamer `star` live in room `room`, and a funded viewer `fan` in it.
async fn live(server: &TestServer, star: &str, room: &str, fan: &str) -> (Client, Client) {
    let mut s = server.streamer(star).await;
    s.open_room(room, "PK").await;
    server.top_up(fan, "web", 5_000, &format!("p-{fan}")).await;
    let mut v = server.viewer(fan).await;
    v.join(room).await;
    (s, v)
}

/// Reads `client`'s events until the `pk_ended` of `battle_id`.
async fn until_ended(client: &mut Client, battle_id: &str) -> Vec<Value> {
    events_until(client, Duration::ZERO, |seen| {
        of(seen, "pk_ended")
            .iter()
            .any(|e| e["battle"]["battle_id"] == battle_id)
    })
    .await
}

fn code(e: &Value) -> (u64, &str) {
    (e["code"].as_u64().unwrap(), e["reason"].as_str().unwrap())
}

on_both_ledgers! {
    #[tokio::test]
    async fn gifts_score_in_both_rooms_and_the_battle_ends_once_with_the_ledgers_winner() {
        let server = start(30_000).await;
        let (mut ann, mut va) = live(&server, "ann", "a", "va").await;
        let (mut bo, mut vb) = live(&server, "bo", "b", "vb").await;

        let challenge = ann.ok(json!({ "type": "pk_challenge", "room": "b" })).await;
        let battle = &challenge["battle"];
        let id = battle["battle_id"].as_str().unwrap().to_owned();
        assert_eq!(battle["status"], "invited");
        assert_eq!(battle["challenger"], json!({ "room": "a", "streamer": "ann", "score_coins": 0 }));
        assert_eq!(battle["opponent"], json!({ "room": "b", "streamer": "bo", "score_coins": 0 }));
        let mut b_events = events_until(&mut vb, Duration::ZERO, |seen| !of(seen, "pk_invite").is_empty()).await;
        assert_eq!(of(&b_events, "pk_invite")[0]["battle"], *battle);
        // Busy: neither room takes another challenge while this one is open.
        let (mut cy, _) = live(&server, "cy", "c", "vc").await;
        let busy = cy.request(json!({ "type": "pk_challenge", "room": "b" })).await.unwrap_err();
        assert_eq!(code(&busy), (13012, "pk_busy"));
        // A late joiner sees the challenge in its snapshot.
        let mut late = server.viewer("late").await;
        assert_eq!(late.join("b").await["pk"], *battle);

        let accepted = bo.ok(json!({ "type": "pk_accept", "battle_id": id })).await;
        assert_eq!(accepted["battle"]["status"], "active");
        let ends_ms = accepted["battle"]["ends_ms"].as_u64().unwrap();
        assert_eq!(ends_ms - accepted["battle"]["started_ms"].as_u64().unwrap(), BATTLE_MS);
        let started = |seen: &[Value]| !of(seen, "pk_started").is_empty();
        let mut a_events = events_until(&mut va, Duration::ZERO, started).await;
        b_events.extend(events_until(&mut vb, Duration::ZERO, started).await);

        for k in 0..2 {
            va.send_gift("clap", &format!("a{k}")).await.unwrap();
        }
        vb.send_gift("heart", "b0").await.unwrap();
        a_events.extend(until_ended(&mut va, &id).await);
        b_events.extend(until_ended(&mut vb, &id).await);
        let a_end = check_pk("a", &a_events).ended;
        let b_end = check_pk("b", &b_events).ended;
        assert_eq!(a_end.len(), 1);
        assert_eq!(a_end, b_end, "both rooms show the same result");
        let result = &a_end[0];
        assert_eq!(result["reason"], "time_up");
        assert_eq!(result["winner"], "a");
        assert_eq!(result["challenger"]["score_coins"], 20);
        assert_eq!(result["opponent"]["score_coins"], 5);
        assert!(result["ended_ms"].as_u64().unwrap() >= ends_ms);
        assert!(!of(&a_events, "pk_score").is_empty(), "scores reach the room");

        // The ledger's record is the result; a gift after the end does not change it.
        let db = LedgerDb::open(&server.config).await;
        let sql = format!(
            "SELECT challenger_score_coins, opponent_score_coins FROM pk_battles WHERE battle_id = {}",
            lit(&id)
        );
        assert_eq!(db.ints(&sql).await, [20, 5]);
        va.send_gift("clap", "a-after").await.unwrap();
        assert_eq!(db.ints(&sql).await, [20, 5]);
        assert!(db.audit().await.violations.is_empty());
        let reason = "giftd_pk_ended_total{reason=\"time_up\"}";
        assert_eq!(server.metric(reason).await, 2.0, "once per room");

        // Both rooms are free again.
        let again = bo.ok(json!({ "type": "pk_challenge", "room": "a" })).await;
        assert_eq!(again["battle"]["challenger"]["room"], "b");
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn a_challenge_can_be_declined_expires_unanswered_and_bad_ones_are_refused() {
        let server = start(1_000).await;
        let (mut ann, mut va) = live(&server, "ann", "a", "va").await;
        let (mut bo, mut vb) = live(&server, "bo", "b", "vb").await;

        let e = ann.request(json!({ "type": "pk_challenge", "room": "a" })).await.unwrap_err();
        assert_eq!(code(&e), (11003, "invalid_message"));
        let e = ann.request(json!({ "type": "pk_challenge", "room": "nowhere" })).await.unwrap_err();
        assert_eq!(code(&e), (13001, "room_not_found"));
        let e = va.request(json!({ "type": "pk_challenge", "room": "b" })).await.unwrap_err();
        assert_eq!(code(&e), (12003, "wrong_role"));
        let e = bo.request(json!({ "type": "pk_accept", "battle_id": "k0" })).await.unwrap_err();
        assert_eq!(code(&e), (13013, "pk_not_found"));

        // Declined: both rooms see it end, with no winner.
        let first = ann.ok(json!({ "type": "pk_challenge", "room": "b" })).await;
        let id = first["battle"]["battle_id"].as_str().unwrap().to_owned();
        // Only the challenged room answers.
        let e = ann.request(json!({ "type": "pk_accept", "battle_id": id })).await.unwrap_err();
        assert_eq!(code(&e), (13013, "pk_not_found"));
        vb.next_event_of("pk_invite").await;
        let declined = bo.ok(json!({ "type": "pk_decline", "battle_id": id })).await;
        assert_eq!(declined["battle"]["reason"], "declined");
        for (room, v) in [("a", &mut va), ("b", &mut vb)] {
            let ended = check_pk(room, &until_ended(v, &id).await).ended;
            assert_eq!(ended.len(), 1);
            assert_eq!(ended[0]["reason"], "declined");
            assert!(ended[0].get("winner").is_none());
        }

        // Unanswered: it expires after rooms.pk_answer_ms, and an answer after that is refused.
        let second = ann.ok(json!({ "type": "pk_challenge", "room": "b" })).await;
        let id = second["battle"]["battle_id"].as_str().unwrap().to_owned();
        let ended = check_pk("b", &until_ended(&mut vb, &id).await).ended;
        assert_eq!(ended[0]["reason"], "expired");
        let e = bo.request(json!({ "type": "pk_accept", "battle_id": id })).await.unwrap_err();
        assert_eq!(code(&e), (13013, "pk_not_found"));
        let ended = check_pk("a", &until_ended(&mut va, &id).await).ended;
        assert_eq!(ended[0]["reason"], "expired");
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn a_streamer_who_leaves_or_a_room_that_closes_forfeits_the_battle() {
        let server = TestServer::start_with(|c| c.rooms.pk_duration_ms = 600_000).await;
        let (mut ann, mut va) = live(&server, "ann", "a", "va").await;
        let (mut bo, mut vb) = live(&server, "bo", "b", "vb").await;

        // bo leaves although b leads: a wins.
        let id = battle(&mut ann, &mut bo, "b").await;
        vb.send_gift("coffee", "b0").await.unwrap();
        let left = bo.ok(json!({ "type": "pk_leave", "battle_id": id })).await;
        assert_eq!(left["battle"]["reason"], "left");
        assert_eq!(left["battle"]["winner"], "a");
        assert_eq!(left["battle"]["opponent"]["score_coins"], 100);
        for (room, v) in [("a", &mut va), ("b", &mut vb)] {
            let ended = check_pk(room, &until_ended(v, &id).await).ended;
            assert_eq!(ended[0], left["battle"]);
        }

        // ann closes her room mid-battle: b wins; a's members see pk_ended, then room_closed.
        let id = battle(&mut bo, &mut ann, "a").await;
        va.send_gift("coffee", "a0").await.unwrap();
        let closed = ann.ok(json!({ "type": "close_room" })).await;
        let a_events = events_until(&mut va, Duration::ZERO, |seen| {
            seen.last().is_some_and(|e| e["seq"] == closed["seq"])
        })
        .await;
        let ended = check_pk("a", &a_events).ended;
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0]["reason"], "room_closed");
        assert_eq!(ended[0]["winner"], "b");
        let n = a_events.len();
        assert_eq!(a_events[n - 1]["kind"], "room_closed");
        assert_eq!(a_events[n - 2]["kind"], "pk_ended");
        let b_ended = check_pk("b", &until_ended(&mut vb, &id).await).ended;
        assert_eq!(b_ended, ended);
        // b is free for another battle.
        let (mut cy, _) = live(&server, "cy", "c", "vc").await;
        cy.ok(json!({ "type": "pk_challenge", "room": "b" })).await;
    }
}

/// `challenger` challenges `opponent`'s room `room`, which accepts; returns the battle's id.
async fn battle(challenger: &mut Client, opponent: &mut Client, room: &str) -> String {
    let invited = challenger
        .ok(json!({ "type": "pk_challenge", "room": room }))
        .await;
    let id = invited["battle"]["battle_id"].as_str().unwrap().to_owned();
    opponent.next_event_of("pk_invite").await;
    opponent
        .ok(json!({ "type": "pk_accept", "battle_id": id }))
        .await;
    id
}

#[tokio::test]
async fn a_room_closed_because_its_streamer_stayed_away_forfeits_its_battle() {
    let server = TestServer::start_with(|c| {
        c.rooms.streamer_away_close_ms = 1_000;
        c.rooms.pk_duration_ms = 600_000;
    })
    .await;
    let (mut ann, mut va) = live(&server, "ann", "a", "va").await;
    let (mut bo, mut vb) = live(&server, "bo", "b", "vb").await;
    let id = battle(&mut ann, &mut bo, "b").await;
    // ann's app dies and does not come back: the room ticker closes her room, ending the battle.
    drop(ann);
    let a_events = events_until(&mut va, Duration::ZERO, |seen| {
        seen.last().is_some_and(|e| e["kind"] == "room_closed")
    })
    .await;
    let ended = check_pk("a", &a_events).ended;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "room_closed");
    assert_eq!(ended[0]["winner"], "b");
    assert_eq!(a_events[a_events.len() - 2]["kind"], "pk_ended");
    let b_ended = check_pk("b", &until_ended(&mut vb, &id).await).ended;
    assert_eq!(b_ended, ended);
}
