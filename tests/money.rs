//! Money through a real server: exact splits, mixed-channel wallets, refusals that move nothing,
//! and idempotency under concurrency and across a restart.

mod support;

use futures_util::future::join_all;
use serde_json::json;
use support::rooms::room_with_viewer;
use support::TestServer;

on_both_ledgers! {
    #[tokio::test]
    async fn single_channel_split_is_exact() {
        let server = TestServer::start_with(|c| {
            c.split.streamer_share_bps.insert("star".into(), 7_000);
        })
        .await;
        server.top_up("bob", "android", 50_000, "play-1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        // 50,000 android coins: store 30% = 15,000; the 35,000 left splits 70/30.
        let r = bob.send_gift("castle", "k1").await.unwrap();
        assert_eq!(
            (
                r["store_coins"].as_u64(),
                r["streamer_coins"].as_u64(),
                r["platform_coins"].as_u64()
            ),
            (Some(15_000), Some(24_500), Some(10_500))
        );
        // One coin: exact shares 0.3 / 0.49 / 0.21 -> the streamer's largest remainder takes it.
        server.top_up("bob", "android", 1, "play-2").await;
        let r = bob.send_gift("rose", "k2").await.unwrap();
        assert_eq!(
            (
                r["store_coins"].as_u64(),
                r["streamer_coins"].as_u64(),
                r["platform_coins"].as_u64()
            ),
            (Some(0), Some(1), Some(0))
        );
        assert_eq!(server.wallet("star").await["earnings_coins"], 24_501);
        let text = server.metrics().await;
        assert!(
            text.contains(r#"giftd_gift_coins_total{channel="android",party="store"} 15000"#),
            "{text}"
        );
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn mixed_channel_wallet_spends_web_first_and_splits_exactly() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 100, "a1").await;
        server.top_up("bob", "web", 60, "w1").await;
        server.top_up("bob", "android", 40, "g1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        // 100 coins: 60 web (no fee), 40 android (30%): store 12, net 88 -> 44 / 44.
        let r = bob.send_gift("coffee", "k").await.unwrap();
        assert_eq!(
            r["funding"],
            json!({ "ios_coins": 0, "android_coins": 40, "web_coins": 60 })
        );
        assert_eq!(
            (
                r["store_coins"].as_u64(),
                r["streamer_coins"].as_u64(),
                r["platform_coins"].as_u64()
            ),
            (Some(12), Some(44), Some(44))
        );
        assert_eq!(r["balance_coins"], 100);
        let w = server.wallet("bob").await;
        assert_eq!(
            (
                w["ios_coins"].as_u64(),
                w["android_coins"].as_u64(),
                w["web_coins"].as_u64()
            ),
            (Some(100), Some(0), Some(0))
        );
        // The next gift crosses into ios coins: 10 coins at 30% -> store 3, net 7 -> 4 / 3.
        let r = bob.send_gift("clap", "k2").await.unwrap();
        assert_eq!(r["funding"]["ios_coins"], 10);
        assert_eq!(
            (
                r["store_coins"].as_u64(),
                r["streamer_coins"].as_u64(),
                r["platform_coins"].as_u64()
            ),
            (Some(3), Some(4), Some(3))
        );
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn refusals_move_no_money() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 50, "a1").await;
        let (mut star, mut bob) = room_with_viewer(&server, "bob").await;

        let e = bob.send_gift("coffee", "k1").await.unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(14001), Some("insufficient_funds"))
        );
        let e = bob.send_gift("unicorn", "k2").await.unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(14002), Some("unknown_sticker"))
        );
        let e = bob
            .request(json!({ "type": "ask", "text": "hi", "sticker": "rose" }))
            .await
            .unwrap_err();
        assert_eq!(
            e["reason"], "invalid_message",
            "a paid question needs a key"
        );
        let e = bob.send_gift("rose", "").await.unwrap_err();
        assert_eq!(e["reason"], "invalid_message", "an empty key is refused");

        star.ok(json!({ "type": "close_room" })).await;
        let e = bob.send_gift("rose", "k3").await.unwrap_err();
        assert_eq!(e["reason"], "not_in_room");
        let e = bob
            .request(json!({ "type": "join", "room": "r" }))
            .await
            .unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(13001), Some("room_not_found"))
        );

        assert_eq!(server.balance("bob").await, 50);
        assert_eq!(server.metric("giftd_gifts_total").await, 0.0);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn fifty_concurrent_retries_debit_once() {
        let server = TestServer::start().await;
        server.top_up("bob", "web", 1_000, "w1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut clients = Vec::new();
        for _ in 0..50 {
            let mut c = server.viewer("bob").await;
            c.join("r").await;
            clients.push(c);
        }
        let receipts = join_all(
            clients
                .iter_mut()
                .map(|c| async move { c.send_gift("coffee", "same-key").await.unwrap() }),
        )
        .await;
        let first = &receipts[0];
        for r in &receipts {
            assert_eq!(r["gift_id"], first["gift_id"]);
            assert_eq!(
                r["seq"], first["seq"],
                "every retry reports the original's room sequence number"
            );
            assert_eq!(r["balance_coins"], 900);
        }
        assert_eq!(
            receipts.iter().filter(|r| r["replayed"] == false).count(),
            1
        );
        assert_eq!(server.balance("bob").await, 900);
        assert_eq!(server.metric("giftd_gifts_total").await, 1.0);
        // The room saw the gift once.
        assert_eq!(
            star.next_event_of("gift").await["gift_id"],
            first["gift_id"]
        );
        star.ok(json!({ "type": "ping" })).await;
        assert!(
            !star.backlog().iter().any(|v| v["kind"] == "gift"),
            "a second gift event was published"
        );
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn same_key_different_payload_conflicts() {
        let server = TestServer::start().await;
        server.top_up("bob", "web", 1_000, "w1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        bob.send_gift("coffee", "k").await.unwrap();
        let e = bob.send_gift("star", "k").await.unwrap_err();
        assert_eq!(
            (e["code"].as_u64(), e["reason"].as_str()),
            (Some(14003), Some("idempotency_conflict"))
        );
        assert_eq!(server.balance("bob").await, 900);
        // A top-up replayed with another amount conflicts too.
        let body = json!({ "user": "bob", "channel": "web", "coins": 5, "purchase_id": "w1" });
        let (status, text) = server
            .http(
                "POST",
                "/admin/topup",
                Some(support::ADMIN_TOKEN),
                Some(&body),
            )
            .await;
        assert_eq!(status, 409, "{text}");
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn retry_after_reconnect_and_restart_returns_the_original_receipt() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 1_000, "a1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        let original = bob.send_gift("star", "persisted-key").await.unwrap();
        drop(bob);

        // Reconnect on the same node.
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let again = bob.send_gift("star", "persisted-key").await.unwrap();
        assert_eq!(again["gift_id"], original["gift_id"]);
        assert_eq!(again["replayed"], true);
        drop(bob);
        drop(_star);

        // Restart on the same ledger: the room must be reopened; the key still replays.
        let server = server.restart().await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let after = bob.send_gift("star", "persisted-key").await.unwrap();
        let mut expected = original.clone();
        expected["replayed"] = json!(true);
        assert_eq!(
            after, expected,
            "the original receipt, room sequence number included"
        );
        assert_eq!(server.balance("bob").await, 500);
    }
}
