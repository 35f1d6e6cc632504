//! Durability and lifecycle: acknowledged gifts survive a restart, the audit passes, and shutdown
//! closes every WebSocket with 1001 after finishing what was in flight.

mod support;

use serde_json::json;
use support::TestServer;

#[tokio::test]
async fn acknowledged_gifts_survive_a_restart_and_the_audit_passes() {
    let server = TestServer::start().await;
    server.top_up("bob", "ios", 300, "a1").await;
    server.top_up("bob", "web", 200, "w1").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    let mut gift_ids = Vec::new();
    for i in 0..20 {
        let r = bob.send_gift("clap", &format!("k{i}")).await.unwrap();
        gift_ids.push(r["gift_id"].as_str().unwrap().to_owned());
    }
    drop((star, bob));
    let server = server.restart().await;

    assert_eq!(server.balance("bob").await, 300);
    assert!(
        server.wallet("star").await["earnings_coins"]
            .as_u64()
            .unwrap()
            > 0
    );
    let conn = rusqlite::Connection::open(server.db()).unwrap();
    for id in &gift_ids {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM gifts WHERE gift_id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "{id}");
    }
    let report = giftd::ledger::audit::audit(&server.db()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(
        (
            report.gifts,
            report.topups,
            report.topped_up_coins,
            report.gifted_coins
        ),
        (20, 2, 500, 200)
    );

    // The binary's audit command agrees, and fails on a forged row.
    let audit = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_giftd"))
            .args(["audit", "--db"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = audit(&server.db());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    conn.execute(
        "UPDATE accounts SET balance_coins = balance_coins + 1 WHERE account = 'platform'",
        [],
    )
    .unwrap();
    let out = audit(&server.db());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("money not conserved"));
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001() {
    let mut server = TestServer::start().await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    server.shutdown().await;
    assert_eq!(star.closed().await.code, 1001);
    assert_eq!(bob.closed().await.code, 1001);
}

#[tokio::test]
async fn shutdown_finishes_the_gift_in_flight_before_closing() {
    let mut server = TestServer::start().await;
    server.top_up("bob", "web", 100, "w").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    let id = bob
        .send(json!({ "type": "send_gift", "sticker": "clap", "key": "last" }))
        .await;
    server.shutdown().await;
    // Either the gift was committed and its receipt arrived before the 1001 close, or it never
    // reached the ledger. Never a debit without a receipt.
    let closed = bob.closed().await;
    assert_eq!(closed.code, 1001);
    let receipt = bob.backlog().iter().find(|v| v["id"] == json!(id)).cloned();
    let server = server.restart().await;
    let balance = server.balance("bob").await;
    match receipt {
        Some(r) => {
            assert_eq!(r["type"], "ack", "{r}");
            assert_eq!(balance, 90);
        }
        None => assert_eq!(balance, 100),
    }
}

#[tokio::test]
async fn ready_while_serving() {
    let server = TestServer::start().await;
    let (status, body) = server.http("GET", "/readyz", None, None).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""ready":true"#), "{body}");
}
