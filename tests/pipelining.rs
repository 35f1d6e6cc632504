//! Gifts in flight: a connection's `send_gift` commands commit concurrently (up to
//! `server.gifts_in_flight_max`) and are answered as each commits, while every other command
//! still waits for them (docs/PROTOCOL.md §2).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::rooms::room_with_viewer;
use support::{Client, TestServer};

/// Reads until every id in `ids` is answered; returns the replies by id, in arrival order.
async fn replies(client: &mut Client, ids: &[u64]) -> Vec<Value> {
    let wanted: BTreeSet<u64> = ids.iter().copied().collect();
    let mut got = Vec::new();
    while got.len() < wanted.len() {
        let m = client.next_message().await;
        if matches!(m["type"].as_str(), Some("ack" | "error")) {
            let id = m["id"].as_u64().unwrap();
            assert!(wanted.contains(&id), "unexpected reply {m}");
            got.push(m);
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_gifts_are_each_answered_once_and_the_next_command_waits_for_them() {
    let server = TestServer::start().await;
    let rose = server.price("rose").await;
    server.top_up("bob", "web", 100 * rose, "p1").await;
    let (_star, mut bob) = room_with_viewer(&server, "bob").await;
    let mut witness = server.viewer("witness").await;
    witness.join("r").await;

    let mut ids = Vec::new();
    for k in 0..40 {
        ids.push(
            bob.send(json!({ "type": "send_gift", "sticker": "rose", "key": format!("k{k}") }))
                .await,
        );
    }
    // Sent behind the gifts without waiting: it must see every one of them.
    let balance_id = bob.send(json!({ "type": "balance" })).await;
    ids.push(balance_id);
    let answered = replies(&mut bob, &ids).await;

    let last = answered.last().unwrap();
    assert_eq!(
        last["id"], balance_id,
        "balance is answered after the gifts"
    );
    assert_eq!(last["result"]["balance_coins"], 60 * rose, "{last}");
    let receipts: HashMap<u64, &Value> = answered[..40]
        .iter()
        .map(|r| {
            assert_eq!(r["type"], "ack", "{r}");
            (r["id"].as_u64().unwrap(), &r["result"])
        })
        .collect();
    assert_eq!(receipts.len(), 40, "each gift answered exactly once");
    let seqs: BTreeSet<u64> = receipts
        .values()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 40, "each gift its own event");

    // The room saw the 40 gifts in `seq` order, each at its receipt's position.
    let mut at = HashMap::new();
    while at.len() < 40 {
        let e = witness.next_event_of("gift").await;
        at.insert(e["seq"].as_u64().unwrap(), e["gift_id"].clone());
    }
    for r in receipts.values() {
        assert_eq!(at[&r["seq"].as_u64().unwrap()], r["gift_id"], "{r}");
    }
    assert_eq!(server.balance("bob").await, 60 * rose);
    let report = giftd::ledger::audit::audit(&server.db()).unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.gifts, 40);
}

/// While the ledger cannot commit (another process holds SQLite's write lock), a connection's
/// pipelined gifts all wait at the ledger together, so they share its next batch, and each
/// gets its receipt once the lock is gone. With one gift at a time, only one would be waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_gifts_wait_for_the_ledger_together() {
    let server = TestServer::start_with(|c| c.server.gifts_in_flight_max = 8).await;
    server.top_up("bob", "web", 10_000, "p1").await;
    let (_star, mut bob) = room_with_viewer(&server, "bob").await;

    let blocker = rusqlite::Connection::open(server.db()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut ids = Vec::new();
    for k in 0..12 {
        ids.push(
            bob.send(json!({ "type": "send_gift", "sticker": "rose", "key": format!("k{k}") }))
                .await,
        );
    }
    // Bounded well inside the ledger's call deadline and SQLite's busy timeout.
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.metric("giftd_gifts_in_flight").await < 8.0 {
        assert!(
            Instant::now() < deadline,
            "the connection's gifts did not wait together: {} in flight",
            server.metric("giftd_gifts_in_flight").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.metric("giftd_gifts_in_flight").await,
        8.0,
        "no more than server.gifts_in_flight_max"
    );
    blocker.execute_batch("COMMIT").unwrap();

    for r in replies(&mut bob, &ids).await {
        assert_eq!(r["type"], "ack", "{r}");
    }
    assert_eq!(server.metric("giftd_gifts_in_flight").await, 0.0);
}
