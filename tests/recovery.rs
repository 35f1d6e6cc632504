//! Recovery of missed events on one node (docs/PROTOCOL.md §4): a viewer that reconnects and
//! joins with the position it last saw gets every event it missed, in order, then live ones.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{Client, TestServer};

/// Reads events until `seq`, returning their sequence numbers; viewer counts included.
async fn events_until(client: &mut Client, seq: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    // Bounded: at most the events asked for, plus the viewer counts between them.
    for _ in 0..10_000 {
        let e = client.next_event().await;
        let s = e["seq"].as_u64().unwrap();
        seen.push(s);
        if s >= seq {
            return seen;
        }
    }
    panic!("never reached seq {seq}");
}

#[tokio::test]
async fn a_viewer_away_for_two_seconds_recovers_all_100_events_it_missed() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    let opened = star.open_room("r", "t").await;
    let epoch = opened["epoch"].as_str().unwrap().to_owned();
    let mut bob = server.viewer("bob").await;
    let first = bob.join("r").await;
    assert_eq!(first["epoch"], epoch.as_str());
    star.ok(json!({ "type": "ping" })).await;
    let mut asker = server.viewer("asker").await;
    asker.join("r").await;
    asker.ok(json!({ "type": "ask", "text": "before" })).await;
    let seen = events_until(&mut bob, 1).await;
    let last_seen = *seen.last().unwrap();
    // Every event carries the room's position.
    drop(bob);

    // 100 questions while bob is away for 2 seconds.
    for i in 0..100 {
        asker
            .ok(json!({ "type": "ask", "text": format!("q{i}") }))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let room_seq = {
        let rooms: Value =
            serde_json::from_str(&server.http("GET", "/rooms", None, None).await.1).unwrap();
        rooms["rooms"][0]["seq"].as_u64().unwrap()
    };

    let mut bob = server.viewer("bob").await;
    let ack = bob
        .ok(json!({ "type": "join", "room": "r", "since": { "epoch": epoch, "seq": last_seen } }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["seq"], last_seen);
    assert!(
        ack.get("questions_open").is_none(),
        "no snapshot on recovery: {ack}"
    );
    asker.ok(json!({ "type": "ask", "text": "live" })).await;

    // Every missed event, in order, no gap and no duplicate, then the live one.
    let mut questions = Vec::new();
    let mut expected = last_seen + 1;
    loop {
        let e = bob.next_event().await;
        assert_eq!(e["seq"], expected, "gap or duplicate: {e}");
        assert_eq!(e["epoch"], epoch.as_str());
        expected += 1;
        if e["kind"] == "question" {
            questions.push(e["text"].as_str().unwrap().to_owned());
            if e["text"] == "live" {
                break;
            }
        }
    }
    assert!(expected > room_seq + 1);
    let wanted: Vec<String> = (0..100)
        .map(|i| format!("q{i}"))
        .chain(["live".into()])
        .collect();
    assert_eq!(questions, wanted);
    assert_eq!(
        server
            .metric(r#"giftd_recoveries_total{recovered="true"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_position_the_room_cannot_serve_gets_a_fresh_snapshot() {
    let server = TestServer::start_with(|c| c.rooms.history_events_max = 10).await;
    let mut star = server.streamer("star").await;
    let epoch = star.open_room("r", "t").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut asker = server.viewer("asker").await;
    asker.join("r").await;
    for i in 0..30 {
        asker
            .ok(json!({ "type": "ask", "text": format!("q{i}") }))
            .await;
    }
    let mut bob = server.viewer("bob").await;
    for since in [
        json!({ "epoch": epoch, "seq": 2 }), // evicted from the history
        json!({ "epoch": "0123456789abcdef", "seq": 5 }), // another incarnation of the room
        json!({ "epoch": epoch, "seq": 10_000 }), // ahead of the room
    ] {
        let ack = bob
            .ok(json!({ "type": "join", "room": "r", "since": since }))
            .await;
        assert_eq!(ack["recovered"], false, "{since}: {ack}");
        assert_eq!(ack["epoch"], epoch.as_str());
        assert_eq!(ack["questions_open"].as_array().unwrap().len(), 30);
        bob.ok(json!({ "type": "leave" })).await;
    }
    // A malformed position is refused like any bad field.
    for since in [
        json!({ "epoch": "", "seq": 1 }),
        json!({ "epoch": "x", "seq": -1 }),
        json!({ "epoch": "x" }),
    ] {
        let e = bob
            .request(json!({ "type": "join", "room": "r", "since": since }))
            .await
            .unwrap_err();
        assert_eq!(e["reason"], "invalid_message", "{since}");
    }
    assert_eq!(
        server
            .metric(r#"giftd_recoveries_total{recovered="false"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_reopened_room_has_a_new_epoch_and_numbers_from_one() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    let first = star.open_room("r", "t").await["epoch"].clone();
    star.ok(json!({ "type": "close_room" })).await;
    let again = star.open_room("r", "t").await;
    assert_ne!(again["epoch"], first);
    assert_eq!(again["seq"], 0);
}
