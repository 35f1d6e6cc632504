//! Bad input gets a clear error with a stable code, the connection survives unless the input is
//! abusive, and no money moves. Input that ends the connection (oversized messages, too many
//! protocol errors) and rate limits are played as abuse in tests/hostile.rs.

mod support;

use serde_json::json;
use support::TestServer;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_messages_get_codes_and_the_connection_survives() {
    let server = TestServer::start().await;
    server.top_up("bob", "web", 100, "w").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;

    bob.send_text("{not json").await;
    let e = bob.next_of("error").await;
    assert_eq!(
        (e["code"].as_u64(), e["reason"].as_str(), e["id"].is_null()),
        (Some(11001), Some("bad_json"), true)
    );

    let cases = [
        (json!({ "type": "fly" }), 11002, "unknown_type"),
        (
            json!({ "type": "send_gift", "sticker": "rose" }),
            11003,
            "invalid_message",
        ),
        (
            json!({ "type": "send_gift", "sticker": 5, "key": "k" }),
            11003,
            "invalid_message",
        ),
        (
            json!({ "type": "join", "room": "bad room id!" }),
            11003,
            "invalid_message",
        ),
        (
            json!({ "type": "ask", "text": "   " }),
            11003,
            "invalid_message",
        ),
        (
            json!({ "type": "ask", "text": "x".repeat(301) }),
            15002,
            "text_too_long",
        ),
        (
            json!({ "type": "send_gift", "sticker": "rose", "key": "k", "extra": 1 }),
            11003,
            "invalid_message",
        ),
    ];
    for (body, code, reason) in cases {
        let e = bob.request(body.clone()).await.unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(code), Some(reason)),
            "{body}"
        );
    }
    bob.send_raw(Message::binary(vec![1, 2, 3])).await;
    let e = bob.next_of("error").await;
    assert_eq!(e["reason"], "binary_frame");

    // Still connected, and nothing was charged.
    assert!(bob.send_gift("rose", "real").await.is_ok());
    assert_eq!(server.balance("bob").await, 99);
}

#[tokio::test]
async fn connections_over_the_maximum_get_503() {
    let server = TestServer::start_with(|c| c.server.connections_max = 2).await;
    let a = server.viewer("a").await;
    let _b = server.viewer("b").await;
    let token = server.token("c", giftd::auth::Role::Viewer);
    let err = support::Client::connect(&server.url(), Some(&token))
        .await
        .err();
    match err {
        Some(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    let text = server.metrics().await;
    assert!(
        text.contains(r#"giftd_connections_rejected_total{reason="connections_max"} 1"#),
        "{text}"
    );
    // A connection that closes gives its slot back (`http.rs`, `Slots`), once the server has
    // seen it close.
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match support::Client::connect(&server.url(), Some(&token)).await {
            Ok(_) => break,
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if r.status() == 503 && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the closed connection's slot never came back: {e:?}"),
        }
    }
}

#[tokio::test]
async fn admin_api_refuses_bad_requests() {
    let server = TestServer::start().await;
    let topup = |body: serde_json::Value, token: Option<&'static str>| {
        let server = &server;
        async move {
            server
                .http("POST", "/admin/topup", token, Some(&body))
                .await
        }
    };
    let ok = json!({ "user": "bob", "channel": "web", "coins": 5, "purchase_id": "p" });
    assert_eq!(topup(ok.clone(), None).await.0, 401);
    assert_eq!(
        topup(ok.clone(), Some("wrong-token-wrong-token")).await.0,
        401
    );
    let (status, body) = topup(
        json!({ "user": "bob", "channel": "mars", "coins": 5, "purchase_id": "p" }),
        Some(support::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = topup(
        json!({ "user": "bob", "channel": "web", "coins": 0, "purchase_id": "p" }),
        Some(support::ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = server
        .http("POST", "/admin/topup", Some(support::ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_json"), "{body}");
    assert_eq!(server.balance("bob").await, 0);
}

#[tokio::test]
async fn a_flood_of_tiny_frames_is_throttled_to_the_inbound_budget() {
    let (rate, burst) = (1024u64, 16 * 1024u64);
    let server = TestServer::start_with(|c| {
        c.server.inbound_bytes_per_sec = rate;
        c.server.inbound_burst_bytes = burst;
    })
    .await;
    let mut ws = server.viewer("bob").await.into_inner();
    use futures_util::{SinkExt, StreamExt};
    // 20,000 empty pings: 6 bytes each on the wire (header and mask), 120 KB in all, each of
    // which the server would answer with a pong if it read them all.
    let started = std::time::Instant::now();
    for _ in 0..20_000 {
        ws.feed(Message::Ping(Default::default())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut pongs = 0u64;
    let window = std::time::Duration::from_secs(2);
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout_at((started + window).into(), ws.next()).await
    {
        if matches!(msg, Message::Pong(_)) {
            pongs += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The server cannot have read more than its budget (plus one read buffer of overdraft).
    let read_max = burst as f64 + rate as f64 * elapsed + 1024.0;
    assert!(pongs >= 1, "the connection works");
    assert!(
        (pongs * 6) as f64 <= read_max,
        "{pongs} pongs: the server read past its budget ({read_max} bytes)"
    );
}
