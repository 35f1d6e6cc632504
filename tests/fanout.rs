//! Fan-out: every member sees every event once, in sequence order, and a member that cannot keep
//! up is dropped without holding up the room.

mod support;

use giftd::auth::Role;
use serde_json::json;
use support::{Client, TestServer};
use tokio::net::TcpSocket;

/// A viewer whose socket buffers are tiny and who never reads.
async fn stalled_viewer(
    server: &TestServer,
    room: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!(
        "{}?token={}",
        server.url(),
        server.token("sloth", Role::Viewer)
    );
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut c = Client::from_stream(ws);
    c.next_of("welcome").await;
    c.join(room).await;
    // Hand the stream back; from now on nobody reads it.
    c.into_inner()
}

#[tokio::test]
async fn slow_consumer_is_dropped_and_others_get_every_event_in_order() {
    let server = TestServer::start_with(|c| {
        c.rooms.room_ring_frames = 64;
        c.rooms.question_chars_max = 2_000;
    })
    .await;
    let mut star = server.streamer("star").await;
    star.open_room("flood", "t").await;
    let mut watchers = Vec::new();
    for i in 0..3 {
        let mut w = server.viewer(&format!("w{i}")).await;
        w.join("flood").await;
        watchers.push(w);
    }
    let sloth = stalled_viewer(&server, "flood").await;
    let mut asker = server.viewer("asker").await;
    asker.join("flood").await;

    // ~2 KB events until the stalled viewer's buffers fill and it falls a ring behind.
    let text = "x".repeat(1_900);
    let mut dropped = false;
    for _ in 0..4_000 {
        asker.ok(json!({ "type": "ask", "text": text })).await;
        if server.metric("giftd_slow_consumers_total").await >= 1.0 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the stalled viewer was never dropped");
    let last = asker.ok(json!({ "type": "ping" })).await;
    assert!(last["server_time_ms"].is_u64());

    // Everyone else saw every event, in order, without gaps.
    let final_seq = {
        let room = server.http("GET", "/rooms", None, None).await.1;
        serde_json::from_str::<serde_json::Value>(&room).unwrap()["rooms"][0]["seq"]
            .as_u64()
            .unwrap()
    };
    for w in watchers.iter_mut().chain(std::iter::once(&mut star)) {
        let mut expected = None;
        loop {
            let e = w.next_event().await;
            let seq = e["seq"].as_u64().unwrap();
            if let Some(exp) = expected {
                assert_eq!(seq, exp, "gap or reorder");
            }
            expected = Some(seq + 1);
            if seq == final_seq {
                break;
            }
        }
    }
    drop(sloth);
}

#[tokio::test]
async fn sequence_numbers_are_gap_free_for_every_member() {
    let server = TestServer::start().await;
    server.top_up("bob", "web", 10_000, "w").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut viewers = Vec::new();
    for i in 0..10 {
        let mut v = server.viewer(&format!("v{i}")).await;
        v.join("r").await;
        viewers.push(v);
    }
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    let mut gift_ids = Vec::new();
    for i in 0..100 {
        gift_ids.push(bob.send_gift("clap", &format!("k{i}")).await.unwrap()["gift_id"].clone());
    }
    for v in viewers.iter_mut() {
        let mut last_seq = None;
        let mut seen = Vec::new();
        while seen.len() < gift_ids.len() {
            let e = v.next_event().await;
            let seq = e["seq"].as_u64().unwrap();
            if let Some(prev) = last_seq {
                assert_eq!(seq, prev + 1);
            }
            last_seq = Some(seq);
            if e["kind"] == "gift" {
                seen.push(e["gift_id"].clone());
            }
        }
        assert_eq!(seen, gift_ids);
    }
}
