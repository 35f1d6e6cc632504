//! Gift combos through real WebSocket clients (docs/PROTOCOL.md §4): consecutive gifts of one
//! sticker from one viewer within `rooms.combo_window_ms` carry `combo` progress, and every
//! combo of two or more gifts ends with exactly one `combo_end`, whether its window lapses, its
//! sender switches sticker, its sender disconnects or the room closes.

mod mechanics;
mod support;

use std::time::Duration;

use mechanics::{check_combos, events_until, of};
use serde_json::json;
use support::{Client, TestServer};

const WINDOW_MS: u64 = 1_000;

async fn server() -> TestServer {
    TestServer::start_with(|c| c.rooms.combo_window_ms = WINDOW_MS).await
}

/// A funded viewer in room `r`.
async fn viewer(server: &TestServer, user: &str) -> Client {
    server
        .top_up(user, "web", 100_000, &format!("p-{user}"))
        .await;
    let mut v = server.viewer(user).await;
    v.join("r").await;
    v
}

#[tokio::test]
async fn consecutive_gifts_form_a_combo_that_ends_once_when_its_window_lapses() {
    let server = server().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Combos").await;
    let mut bob = viewer(&server, "bob").await;
    for k in 0..3 {
        bob.send_gift("clap", &format!("k{k}")).await.unwrap();
    }
    let events = events_until(&mut star, Duration::from_millis(WINDOW_MS + 500), |seen| {
        !of(seen, "combo_end").is_empty()
    })
    .await;
    let gifts = of(&events, "gift");
    assert!(gifts[0].get("combo").is_none(), "{}", gifts[0]);
    assert_eq!(gifts[1]["combo"], json!({ "count": 2, "total_coins": 20 }));
    assert_eq!(gifts[2]["combo"], json!({ "count": 3, "total_coins": 30 }));
    let end = of(&events, "combo_end");
    assert_eq!(end.len(), 1, "{events:?}");
    let end = end[0];
    assert_eq!(
        (end["from"].clone(), end["sticker"].clone()),
        (json!("bob"), json!("clap"))
    );
    assert_eq!(
        (end["count"].clone(), end["total_coins"].clone()),
        (json!(3), json!(30))
    );
    assert!(end["seq"].as_u64() > gifts[2]["seq"].as_u64());
    let tally = check_combos(&events);
    assert_eq!((tally.ended.len(), tally.open), (1, 0));
    assert_eq!(server.metric("giftd_combos_total").await, 1.0);
}

#[tokio::test]
async fn every_combo_ends_exactly_once_with_many_viewers_interleaved_stickers_and_a_disconnect() {
    let server = server().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Combos").await;
    let users = ["v0", "v1", "v2", "v3", "v4"];
    let mut viewers = Vec::new();
    for user in users {
        viewers.push(Some(viewer(&server, user).await));
    }
    // Each viewer's own sequence; the room sees them interleaved, one gift per viewer per step.
    // Runs: rose x3, heart x1 (a lone gift), rose x2, clap x4.
    let script = [
        "rose", "rose", "rose", "heart", "rose", "rose", "clap", "clap", "clap", "clap",
    ];
    let mut key = 0;
    for step in 0..script.len() {
        for (i, v) in viewers.iter_mut().enumerate() {
            let Some(v) = v else { continue };
            // Odd viewers shift their script by one sticker, so stickers interleave.
            let sticker = script[(step + i % 2) % script.len()];
            key += 1;
            v.send_gift(sticker, &format!("k{key}")).await.unwrap();
        }
        // v0 disconnects right after the 2nd gift of its rose x2 combo, which then ends when
        // its window lapses.
        if step == 5 {
            viewers[0] = None;
        }
    }
    // v2 and v4: 3 combos (rose x3, rose x2, clap x4); v0: 2 (rose x3, rose x2 cut short).
    // v1 and v3 (rose x2, heart, rose x2, clap x4, rose): 3 combos each.
    let expected = 2 + 2 * 3 + 2 * 3;
    let events = events_until(&mut star, Duration::from_millis(WINDOW_MS + 500), |seen| {
        of(seen, "combo_end").len() >= expected
    })
    .await;
    let tally = check_combos(&events);
    assert_eq!(tally.ended.len(), expected, "{:?}", tally.ended);
    assert_eq!(tally.open, 0);
    let v0: Vec<_> = tally.ended.iter().filter(|e| e.0 == "v0").collect();
    assert_eq!(
        v0,
        [
            &("v0".to_owned(), "rose".to_owned(), 3, 3),
            &("v0".to_owned(), "rose".to_owned(), 2, 2)
        ]
    );
    assert_eq!(server.metric("giftd_combos_total").await, expected as f64);
}

#[tokio::test]
async fn a_sender_back_within_the_window_continues_the_combo_and_it_still_ends_once() {
    let server = server().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Combos").await;
    let mut bob = viewer(&server, "bob").await;
    bob.send_gift("heart", "k1").await.unwrap();
    bob.send_gift("heart", "k2").await.unwrap();
    drop(bob);
    // A combo belongs to the sender, not to the connection.
    let mut bob = viewer(&server, "bob").await;
    let r = bob.send_gift("heart", "k3").await.unwrap();
    let events = events_until(&mut star, Duration::from_millis(WINDOW_MS + 500), |seen| {
        !of(seen, "combo_end").is_empty()
    })
    .await;
    let third = events.iter().find(|e| e["seq"] == r["seq"]).unwrap();
    assert_eq!(third["combo"], json!({ "count": 3, "total_coins": 15 }));
    let tally = check_combos(&events);
    assert_eq!(tally.ended, [("bob".to_owned(), "heart".to_owned(), 3, 15)]);
}

#[tokio::test]
async fn another_sticker_ends_the_combo_at_once_and_closing_ends_the_rest() {
    let server = server().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Combos").await;
    let mut bob = viewer(&server, "bob").await;
    bob.send_gift("rose", "k1").await.unwrap();
    bob.send_gift("rose", "k2").await.unwrap();
    let heart = bob.send_gift("heart", "k3").await.unwrap();
    bob.send_gift("heart", "k4").await.unwrap();
    let closed = star.ok(json!({ "type": "close_room" })).await;
    let events = events_until(&mut star, Duration::ZERO, |seen| {
        seen.last().is_some_and(|e| e["kind"] == "room_closed")
    })
    .await;
    let ends = of(&events, "combo_end");
    assert_eq!(ends.len(), 2, "{events:?}");
    // The rose combo ends right before the first heart, the heart combo right before the close.
    assert_eq!(
        ends[0]["seq"].as_u64().unwrap() + 1,
        heart["seq"].as_u64().unwrap()
    );
    assert_eq!(ends[0]["sticker"], "rose");
    assert_eq!(ends[1]["sticker"], "heart");
    assert_eq!(
        ends[1]["seq"].as_u64().unwrap() + 1,
        closed["seq"].as_u64().unwrap()
    );
    let tally = check_combos(&events);
    assert_eq!((tally.ended.len(), tally.open), (2, 0));
}

#[tokio::test]
async fn beyond_the_open_combo_bound_the_stalest_sender_ends_at_once() {
    let server = TestServer::start_with(|c| {
        c.rooms.combo_window_ms = 60_000;
        c.rooms.combos_open_max = 2;
    })
    .await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "Combos").await;
    let mut a = viewer(&server, "a").await;
    let mut b = viewer(&server, "b").await;
    let mut c = viewer(&server, "c").await;
    a.send_gift("rose", "k1").await.unwrap();
    a.send_gift("rose", "k2").await.unwrap();
    b.send_gift("rose", "k3").await.unwrap();
    let third = c.send_gift("rose", "k4").await.unwrap();
    let events = events_until(&mut star, Duration::ZERO, |seen| {
        seen.iter().any(|e| e["seq"] == third["seq"])
    })
    .await;
    let ends = of(&events, "combo_end");
    assert_eq!(ends.len(), 1, "{events:?}");
    assert_eq!(
        (ends[0]["from"].clone(), ends[0]["count"].clone()),
        (json!("a"), json!(2))
    );
    assert_eq!(
        ends[0]["seq"].as_u64().unwrap() + 1,
        third["seq"].as_u64().unwrap()
    );
    check_combos(&events);
}
