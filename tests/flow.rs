//! The whole product path as streamer and viewer apps drive it: open, join, top up, gift,
//! receipt, room event, thank-you, question, answer, close.

mod support;

use serde_json::json;
use support::TestServer;

on_both_ledgers! {
    #[tokio::test]
    async fn full_room_flow() {
        let server = TestServer::start().await;
        let mut star = server.streamer("star").await;
        let opened = star.open_room("live1", "Friday stream").await;
        assert_eq!(opened["seq"], 0);
        assert_eq!(opened["streamer"], "star");

        let topup = server.top_up("bob", "ios", 1_000, "apple-tx-1").await;
        assert_eq!(topup["balance_coins"], 1_000);
        assert_eq!(topup["replayed"], false);

        let mut bob = server.viewer("bob").await;
        let snapshot = bob.join("live1").await;
        assert_eq!(snapshot["title"], "Friday stream");
        assert_eq!(snapshot["seq"], 0);
        assert_eq!(snapshot["viewers"], 1);

        // The viewer count reaches the room coalesced, as its own event.
        let viewers = star.next_event_of("viewers").await;
        assert_eq!(viewers["count"], 1);
        let first_seq = viewers["seq"].as_u64().unwrap();

        let receipt = bob.send_gift("coffee", "k-1").await.unwrap();
        assert_eq!(receipt["sticker"], "coffee");
        assert_eq!(receipt["price_coins"], 100);
        assert_eq!(receipt["store_coins"], 30);
        assert_eq!(receipt["streamer_coins"], 35);
        assert_eq!(receipt["platform_coins"], 35);
        assert_eq!(receipt["balance_coins"], 900);
        assert_eq!(
            receipt["funding"],
            json!({ "ios_coins": 100, "android_coins": 0, "web_coins": 0 })
        );
        assert_eq!(receipt["replayed"], false);
        let gift_id = receipt["gift_id"].as_str().unwrap().to_owned();
        let gift_seq = receipt["seq"].as_u64().unwrap();
        assert_eq!(gift_seq, first_seq + 1);

        let event = star.next_event_of("gift").await;
        assert_eq!(
            event,
            json!({
                "type": "event", "room": "live1", "epoch": snapshot["epoch"], "seq": gift_seq,
                "kind": "gift", "gift_id": gift_id,
                "from": "bob", "sticker": "coffee", "sticker_name": "Coffee", "price_coins": 100,
            })
        );
        assert_eq!(bob.next_event_of("gift").await, event);
        // The streamer alone also gets the gift's split, privately.
        let earned = star.next_of("gift_received").await;
        assert_eq!(
            earned,
            json!({
                "type": "gift_received", "room": "live1", "gift_id": gift_id, "from": "bob",
                "sticker": "coffee", "price_coins": 100, "store_coins": 30,
                "streamer_coins": 35, "platform_coins": 35, "seq": gift_seq,
            })
        );
        assert!(bob.backlog().iter().all(|m| m["type"] != "gift_received"));

        // The streamer thanks the gift: the room sees it and bob gets a private thank-you.
        let thanked = star
            .ok(json!({ "type": "thank", "gift_id": gift_id, "text": "Thanks bob!" }))
            .await;
        assert_eq!(thanked["to"], "bob");
        assert_eq!(star.next_event_of("thanks").await["seq"], thanked["seq"]);
        let private = bob.next_of("thanks").await;
        assert_eq!(
            private,
            json!({ "type": "thanks", "room": "live1", "gift_id": gift_id, "from": "star", "text": "Thanks bob!" })
        );
        let thanks_event = bob.next_event_of("thanks").await;
        assert_eq!(thanks_event["to"], "bob");
        assert_eq!(thanks_event["seq"], thanked["seq"]);

        // A free question, then the streamer's answer.
        let asked = bob
            .ok(json!({ "type": "ask", "text": "What game is next?" }))
            .await;
        let question_id = asked["question_id"].as_u64().unwrap();
        let q_event = star.next_event_of("question").await;
        assert_eq!(q_event["question_id"], question_id);
        assert_eq!(q_event["text"], "What game is next?");
        assert_eq!(q_event["from"], "bob");
        assert!(q_event.get("paid").is_none());
        assert_eq!(bob.next_event_of("question").await, q_event);

        let answer_ack = star
            .ok(json!({ "type": "answer", "question_id": question_id, "text": "Chess!" }))
            .await;
        assert_eq!(star.next_event_of("answer").await["seq"], answer_ack["seq"]);
        let answered = bob.next_of("answered").await;
        assert_eq!(
            answered,
            json!({ "type": "answered", "room": "live1", "question_id": question_id, "text": "Chess!" })
        );
        let a_event = bob.next_event_of("answer").await;
        assert_eq!(a_event["asker"], "bob");
        assert_eq!(a_event["text"], "Chess!");

        // A paid question is pinned; a late joiner sees it in the snapshot.
        server.top_up("carol", "web", 5_000, "web-tx-1").await;
        let mut carol = server.viewer("carol").await;
        carol.join("live1").await;
        let paid = carol
            .ok(json!({ "type": "ask", "text": "Shout-out please?", "sticker": "star", "key": "carol-q1" }))
            .await;
        assert_eq!(paid["receipt"]["price_coins"], 500);
        assert_eq!(
            paid["receipt"]["store_coins"], 0,
            "web coins pay no store fee"
        );
        let paid_qid = paid["question_id"].as_u64().unwrap();
        let pinned_event = star.next_event_of("question").await;
        assert_eq!(pinned_event["paid"]["price_coins"], 500);
        assert!(
            pinned_event["pinned_until_ms"].as_u64().unwrap()
                > pinned_event["created_ms"].as_u64().unwrap()
        );

        let mut dave = server.viewer("dave").await;
        let snap = dave.join("live1").await;
        let pinned: Vec<u64> = snap["questions_pinned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["question_id"].as_u64().unwrap())
            .collect();
        assert_eq!(pinned, vec![paid_qid]);
        let open: Vec<u64> = snap["questions_open"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["question_id"].as_u64().unwrap())
            .collect();
        assert_eq!(
            open,
            vec![paid_qid],
            "the answered free question is no longer open"
        );

        // Listing, then close: every member is told, and the room is gone.
        let (status, rooms) = server.http("GET", "/rooms", None, None).await;
        assert_eq!(status, 200);
        let rooms: serde_json::Value = serde_json::from_str(&rooms).unwrap();
        assert_eq!(rooms["rooms"][0]["room"], "live1");
        assert_eq!(rooms["rooms"][0]["viewers"], 3);

        star.ok(json!({ "type": "close_room" })).await;
        let closed = dave.next_event_of("room_closed").await;
        assert_eq!(closed["room"], "live1");
        let err = dave.send_gift("rose", "dave-1").await.unwrap_err();
        assert_eq!(err["reason"], "not_in_room");
        let (_, rooms) = server.http("GET", "/rooms", None, None).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&rooms).unwrap()["rooms"],
            json!([])
        );

        // Earnings landed with the streamer.
        let star_wallet = server.wallet("star").await;
        assert_eq!(star_wallet["earnings_coins"], 35 + 250);
    }
}

#[tokio::test]
async fn viewer_counts_are_coalesced() {
    let server = TestServer::start_with(|c| c.rooms.viewer_count_interval_ms = 300).await;
    let mut star = server.streamer("star").await;
    star.open_room("busy", "t").await;
    let mut viewers = Vec::new();
    for i in 0..20 {
        let mut v = server.viewer(&format!("v{i}")).await;
        v.join("busy").await;
        viewers.push(v);
    }
    // Twenty joins within one interval reach the room as few count events, not twenty.
    let mut counts = Vec::new();
    loop {
        let e = star.next_event_of("viewers").await;
        counts.push(e["count"].as_u64().unwrap());
        if counts.last() == Some(&20) {
            break;
        }
    }
    assert!(counts.len() < 20, "one count event per join: {counts:?}");
}

on_both_ledgers! {
    #[tokio::test]
    async fn auto_thanks_thank_every_gift() {
        let server = TestServer::start_with(|c| {
            c.rooms.auto_thanks = "Thank you {sender} for the {sticker}!".into()
        })
        .await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        server.top_up("bob", "android", 10, "g-1").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let receipt = bob.send_gift("heart", "k").await.unwrap();
        let thanks = bob.next_of("thanks").await;
        assert_eq!(thanks["gift_id"], receipt["gift_id"]);
        assert_eq!(thanks["text"], "Thank you bob for the Heart!");
    }
}

#[tokio::test]
async fn streamer_rejoins_own_room_after_reconnect() {
    let server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    drop(star);
    let mut star = server.streamer("star").await;
    let snap = star.join("r").await;
    assert_eq!(
        snap["viewers"], 0,
        "the streamer is not counted as a viewer"
    );
    star.ok(json!({ "type": "close_room" })).await;
}

#[tokio::test]
async fn stickers_and_health_endpoints() {
    let server = TestServer::start().await;
    let (status, body) = server.http("GET", "/stickers", None, None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["stickers"][0]["id"], "rose");
    assert_eq!(server.http("GET", "/healthz", None, None).await.0, 200);
    let (status, body) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
}
