//! Refunds and chargebacks through a real server: a reversed top-up takes its coins back out of
//! the wallet, what was already spent becomes debt that later top-ups repay first, gifts stay
//! settled, the user's connections get a private `refund` notice, and reversals are idempotent.

mod support;

use serde_json::json;
use support::ledger::{check, read_totals, LedgerDb};
use support::rooms::room_with_viewer;
use support::TestServer;

on_both_ledgers! {
    #[tokio::test]
    async fn unspent_coins_leave_the_wallet_once_and_every_connection_hears_of_it() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 1_000, "apple-1").await;
        server.top_up("bob", "web", 300, "web-1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        let mut bob_phone = server.viewer("bob").await;

        let (status, r) = server.refund("apple-1", "refund").await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (r["user"].as_str(), r["channel"].as_str(), r["reason"].as_str(), r["coins"].as_u64()),
            (Some("bob"), Some("ios"), Some("refund"), Some(1_000))
        );
        assert_eq!(
            (r["wallet_coins"].as_u64(), r["debt_coins"].as_u64(), r["balance_coins"].as_u64(), r["owed_coins"].as_u64()),
            (Some(1_000), Some(0), Some(300), Some(0))
        );
        assert_eq!(r["replayed"], false);
        for conn in [&mut bob, &mut bob_phone] {
            let notice = conn.next_of("refund").await;
            assert_eq!(
                notice,
                json!({ "type": "refund", "purchase_id": "apple-1", "reason": "refund", "channel": "ios",
                        "coins": 1_000, "wallet_coins": 1_000, "debt_coins": 0, "balance_coins": 300, "owed_coins": 0 })
            );
        }
        let w = server.wallet("bob").await;
        assert_eq!((w["ios_coins"].as_u64(), w["web_coins"].as_u64(), w["owed_coins"].as_u64()), (Some(0), Some(300), Some(0)));

        // The same reversal again is a replay: same transaction, no second debit, no notice.
        let (status, again) = server.refund("apple-1", "refund").await;
        assert_eq!((status, again["txn_id"].clone(), again["replayed"].clone()), (200, r["txn_id"].clone(), json!(true)));
        assert_eq!(server.balance("bob").await, 300);
        // The same purchase reversed for another reason is a conflict, and changes nothing.
        let (status, e) = server.refund("apple-1", "chargeback").await;
        assert_eq!((status, e["reason"].as_str()), (409, Some("idempotency_conflict")));
        let b = bob.ok(json!({ "type": "balance" })).await;
        assert_eq!((b["balance_coins"].as_u64(), b["owed_coins"].as_u64()), (Some(300), Some(0)));
        assert!(bob.backlog().iter().all(|m| m["type"] != "refund"), "one notice only");

        let text = server.metrics().await;
        for line in [
            r#"giftd_refunds_total{channel="ios",reason="refund"} 1"#,
            r#"giftd_refund_coins_total{channel="ios",from="wallet",reason="refund"} 1000"#,
            r#"giftd_refund_coins_total{channel="ios",from="debt",reason="refund"} 0"#,
            r#"giftd_messages_out_total{type="refund"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let db = LedgerDb::open(&server.config).await;
        check(&read_totals(&db).await);
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn spent_coins_become_debt_that_later_top_ups_repay_first_and_gifts_stay_settled() {
        let server = TestServer::start().await;
        server.top_up("bob", "web", 1_000, "web-1").await;
        server.top_up("bob", "android", 200, "play-1").await;
        let (_star, mut bob) = room_with_viewer(&server, "bob").await;
        // Web coins are spent first: 1,000 web coins go to two stars (no store fee on web).
        bob.send_gift("star", "k1").await.unwrap();
        bob.send_gift("star", "k2").await.unwrap();
        let earned = server.wallet("star").await["earnings_coins"].as_u64().unwrap();
        assert_eq!(earned, 500);

        // The web purchase is charged back: the 200 android coins are taken, 800 become debt.
        let (status, r) = server.refund("web-1", "chargeback").await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(
            (r["wallet_coins"].as_u64(), r["debt_coins"].as_u64(), r["balance_coins"].as_u64(), r["owed_coins"].as_u64()),
            (Some(200), Some(800), Some(0), Some(800))
        );
        let notice = bob.next_of("refund").await;
        assert_eq!((notice["debt_coins"].as_u64(), notice["owed_coins"].as_u64()), (Some(800), Some(800)));
        // The gifts stay settled: the streamer keeps their share.
        assert_eq!(server.wallet("star").await["earnings_coins"], 500);
        let e = bob.send_gift("rose", "k3").await.unwrap_err();
        assert_eq!(e["reason"], "insufficient_funds");

        // Top-ups repay the debt first: 500 all to the debt, then 1,000 of which 300 repay it.
        let t = server.top_up("bob", "ios", 500, "apple-2").await;
        assert_eq!((t["repaid_coins"].as_u64(), t["balance_coins"].as_u64()), (Some(500), Some(0)));
        assert_eq!(server.wallet("bob").await["owed_coins"], 300);
        let t = server.top_up("bob", "web", 1_000, "web-2").await;
        assert_eq!((t["repaid_coins"].as_u64(), t["balance_coins"].as_u64()), (Some(300), Some(700)));
        let replay = server.top_up("bob", "web", 1_000, "web-2").await;
        assert_eq!((replay["repaid_coins"].as_u64(), replay["replayed"].as_bool()), (Some(300), Some(true)));
        let w = server.wallet("bob").await;
        assert_eq!((w["web_coins"].as_u64(), w["owed_coins"].as_u64()), (Some(700), Some(0)));
        bob.send_gift("coffee", "k4").await.unwrap();
        let text = server.metrics().await;
        for line in [
            r#"giftd_refund_coins_total{channel="web",from="debt",reason="chargeback"} 800"#,
            r#"giftd_debt_repaid_coins_total{channel="ios"} 500"#,
            r#"giftd_debt_repaid_coins_total{channel="web"} 300"#,
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }

        let db = LedgerDb::open(&server.config).await;
        let t = read_totals(&db).await;
        check(&t);
        assert_eq!((t.refunds, t.receivables), (1_000, 0));
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn bad_refunds_are_refused_and_move_nothing() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 100, "apple-1").await;
        let (status, e) = server.refund("apple-404", "refund").await;
        assert_eq!((status, e["code"].as_u64(), e["reason"].as_str()), (404, Some(14006), Some("purchase_not_found")));
        let (status, e) = server.refund("apple-1", "regret").await;
        assert_eq!((status, e["reason"].as_str()), (400, Some("invalid_message")));
        let (status, e) = server.refund("", "refund").await;
        assert_eq!((status, e["reason"].as_str()), (400, Some("invalid_message")));
        let (status, e) = server
            .admin("POST", "/admin/refund", Some(&json!({ "purchase_id": "apple-1" })))
            .await;
        assert_eq!((status, e["reason"].as_str()), (400, Some("invalid_message")));
        let (status, _) = server
            .http("POST", "/admin/refund", None, Some(&json!({ "purchase_id": "apple-1", "reason": "refund" })))
            .await;
        assert_eq!(status, 401);
        assert_eq!(server.balance("bob").await, 100);
        // The unknown purchase id was not consumed: once it exists, it can be reversed.
        server.top_up("bob", "ios", 40, "apple-404").await;
        let (status, r) = server.refund("apple-404", "refund").await;
        assert_eq!((status, r["coins"].as_u64()), (200, Some(40)));
        assert_eq!(server.balance("bob").await, 100);
        let db = LedgerDb::open(&server.config).await;
        assert!(db.audit().await.violations.is_empty());
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn a_reversal_survives_a_restart_as_a_replay() {
        let server = TestServer::start().await;
        server.top_up("bob", "android", 100, "play-1").await;
        let (status, r) = server.refund("play-1", "refund").await;
        assert_eq!(status, 200);
        let server = server.restart().await;
        let (status, again) = server.refund("play-1", "refund").await;
        assert_eq!((status, again["replayed"].as_bool()), (200, Some(true)));
        assert_eq!(again["txn_id"], r["txn_id"]);
        assert_eq!(again["wallet_coins"], 100);
        assert_eq!(server.balance("bob").await, 0);
    }
}
