//! Spending caps through a real server: the configured default, per-user caps and minors set
//! through the admin API, refusals that say what is left and move nothing, concurrent gifts that
//! cannot pass a cap together, and the rolling window.

mod support;

use futures_util::future::join_all;
use serde_json::{json, Value};
use support::ledger::LedgerDb;
use support::rooms::room_with_viewer;
use support::TestServer;

/// Asserts `e` is a cap refusal leaving `remaining` coins.
fn capped(e: &Value, remaining: u64) {
    assert_eq!(e["code"], 14005, "{e}");
    assert_eq!(e["reason"], "spending_cap_exceeded", "{e}");
    assert_eq!(e["remaining_coins"], remaining, "{e}");
}

on_both_ledgers! {
    #[tokio::test]
    async fn the_default_cap_refuses_what_goes_beyond_it_and_says_what_is_left() {
        let server = TestServer::start_with(|c| c.spending.window_coins_max = 250).await;
        server.top_up("bob", "web", 1_000, "p1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        bob.send_gift("coffee", "k1").await.unwrap();
        bob.send_gift("coffee", "k2").await.unwrap();
        let e = bob.send_gift("coffee", "k3").await.unwrap_err();
        capped(&e, 50);
        assert!(e["message"].as_str().unwrap().contains("50 of 250 coins left"), "{e}");
        assert_eq!(server.balance("bob").await, 800, "a refused gift moves nothing");
        // What is left can still be spent, to the coin; then nothing more.
        for (sticker, key) in [("clap", "k4"), ("clap", "k5"), ("clap", "k6"), ("clap", "k7"), ("clap", "k8")] {
            bob.send_gift(sticker, key).await.unwrap();
        }
        capped(&bob.send_gift("rose", "k9").await.unwrap_err(), 0);
        // The refused key was not consumed: raising the cap lets the same key through.
        let l = server.limits("bob").await;
        assert_eq!(
            (l["cap_coins"].as_u64(), l["spent_coins"].as_u64(), l["remaining_coins"].as_u64()),
            (Some(250), Some(250), Some(0))
        );
        server.set_limits("bob", json!({ "window_coins_max": 350, "minor": false })).await;
        let r = bob.send_gift("coffee", "k3").await.unwrap();
        assert_eq!(r["replayed"], false);
        assert_eq!(server.balance("bob").await, 650);
        let db = LedgerDb::open(&server.config).await;
        assert!(db.audit().await.violations.is_empty());
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn per_user_caps_and_minors_are_set_through_the_admin_api() {
        let server = TestServer::start_with(|c| {
            c.spending.window_coins_max = 10_000;
            c.spending.minor_window_coins_max = 150;
        })
        .await;
        server.top_up("bob", "android", 5_000, "p1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;

        let l = server.limits("bob").await;
        assert_eq!(
            l,
            json!({ "user": "bob", "window_coins_max": null, "minor": false, "cap_coins": 10_000,
                    "spent_coins": 0, "remaining_coins": 10_000, "window_ms": 86_400_000 })
        );
        // A minor: the minor cap bounds even a higher own cap.
        let l = server.set_limits("bob", json!({ "window_coins_max": 2_000, "minor": true })).await;
        assert_eq!((l["cap_coins"].as_u64(), l["minor"].as_bool()), (Some(150), Some(true)));
        bob.send_gift("coffee", "k1").await.unwrap();
        capped(&bob.send_gift("coffee", "k2").await.unwrap_err(), 50);
        // A minor's own lower cap applies; zero forbids spending at all.
        server.set_limits("bob", json!({ "window_coins_max": 0, "minor": true })).await;
        capped(&bob.send_gift("rose", "k3").await.unwrap_err(), 0);
        // No longer a minor, own cap 500: 400 left.
        let l = server.set_limits("bob", json!({ "window_coins_max": 500, "minor": false })).await;
        assert_eq!(l["remaining_coins"], 400);
        bob.send_gift("coffee", "k4").await.unwrap();
        // Back to the default (null or absent).
        let l = server.set_limits("bob", json!({ "minor": false })).await;
        assert_eq!((l["cap_coins"].as_u64(), l["window_coins_max"].is_null()), (Some(10_000), true));
        bob.send_gift("star", "k5").await.unwrap();
        assert_eq!(server.limits("bob").await["spent_coins"], 700);
        assert_eq!(server.balance("bob").await, 4_300);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn bad_limits_are_refused_and_change_nothing() {
        let server = TestServer::start().await;
        server.set_limits("bob", json!({ "window_coins_max": 70, "minor": true })).await;
        let path = "/admin/users/bob/limits";
        for (body, reason) in [
            (json!({ "window_coins_max": -1, "minor": false }), "invalid_amount"),
            (json!({ "window_coins_max": 1.5, "minor": false }), "invalid_amount"),
            (json!({ "window_coins_max": "100", "minor": false }), "invalid_amount"),
            (json!({ "window_coins_max": 1_000_000_000_001u64, "minor": false }), "invalid_amount"),
            (json!({ "window_coins_max": 10 }), "invalid_message"),
            (json!({ "window_coins_max": 10, "minor": false, "cap": 1 }), "invalid_message"),
        ] {
            let (status, e) = server.admin("PUT", path, Some(&body)).await;
            assert_eq!(e["reason"], reason, "{body}: {e}");
            assert_eq!(status, 400, "{body}");
        }
        let (status, e) = server.admin("PUT", "/admin/users/b%20b/limits", Some(&json!({ "minor": true }))).await;
        assert_eq!((status, e["reason"].as_str()), (400, Some("invalid_message")));
        let (status, _) = server
            .http("PUT", path, None, Some(&json!({ "window_coins_max": 5, "minor": false })))
            .await;
        assert_eq!(status, 401);
        let l = server.limits("bob").await;
        assert_eq!((l["window_coins_max"].as_u64(), l["minor"].as_bool()), (Some(70), Some(true)));
    }
}

on_both_ledgers! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_gifts_from_several_connections_cannot_pass_the_cap_together() {
        let server = TestServer::start_with(|c| c.spending.window_coins_max = 1_000).await;
        server.top_up("bob", "ios", 5_000, "p1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut c = server.viewer("bob").await;
            c.join("r").await;
            conns.push(c);
        }
        // 3 connections pipeline 10 coffees each: 3,000 coins asked, 1,000 allowed.
        let runs = conns.into_iter().enumerate().map(|(n, mut c)| async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                ids.push(c.send(json!({ "type": "send_gift", "sticker": "coffee", "key": format!("c{n}-{i}") })).await);
            }
            let mut results = Vec::new();
            for id in ids {
                results.push(c.reply(id).await);
            }
            results
        });
        let results: Vec<_> = join_all(runs).await.into_iter().flatten().collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            capped(e, 0);
        }
        assert_eq!(ok, 10, "exactly the cap's worth of gifts went through");
        assert_eq!(server.balance("bob").await, 4_000);
        assert_eq!(server.limits("bob").await["spent_coins"], 1_000);
        let db = LedgerDb::open(&server.config).await;
        assert_eq!(db.ints("SELECT COALESCE(SUM(price_coins), 0) FROM gifts").await, vec![1_000]);
        assert!(db.audit().await.violations.is_empty());
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn the_window_rolls() {
        let server = TestServer::start_with(|c| {
            c.spending.window_ms = 1_000;
            c.spending.window_coins_max = 100;
        })
        .await;
        server.top_up("bob", "web", 1_000, "p1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        bob.send_gift("coffee", "k1").await.unwrap();
        capped(&bob.send_gift("rose", "k2").await.unwrap_err(), 0);
        // Once the first gift is older than the window, the whole cap is free again.
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        assert_eq!(server.limits("bob").await["remaining_coins"], 100);
        bob.send_gift("coffee", "k3").await.unwrap();
        assert_eq!(server.balance("bob").await, 800);
    }
}
