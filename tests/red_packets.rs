//! Red packets through a real server: a drop debits the sender at once and the room sees it;
//! the first N distinct grabbers get the recorded shares, each once (also from several
//! connections at once); later grabbers hear "all taken"; what nobody grabbed before expiry goes
//! back to the sender exactly once, also across a restart.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};
use support::ledger::{check, lit, read_totals, LedgerDb};
use support::{Client, TestServer};

async fn drop_packet(c: &mut Client, total: u64, shares: u64, key: &str) -> Result<Value, Value> {
    c.request(
        json!({ "type": "drop_red_packet", "total_coins": total, "shares": shares, "key": key }),
    )
    .await
}

async fn grab(c: &mut Client, packet_id: &str) -> Result<Value, Value> {
    c.request(json!({ "type": "grab_red_packet", "packet_id": packet_id }))
        .await
}

/// The next room event of `kind`, skipping the room's other events.
async fn event(c: &mut Client, kind: &str) -> Value {
    loop {
        let e = c.next_event().await;
        if e["kind"] == kind {
            return e;
        }
    }
}

async fn audit_clean(server: &TestServer) -> LedgerDb {
    let db = LedgerDb::open(&server.config).await;
    check(&read_totals(&db).await);
    let report = db.audit().await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    db
}

on_both_ledgers! {
    #[tokio::test]
    async fn the_room_sees_the_drop_every_grab_and_the_end_and_the_sender_gets_a_summary() {
        let server = TestServer::start().await;
        server.top_up("bob", "web", 1_000, "w1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let r = drop_packet(&mut bob, 100, 3, "rp1").await.unwrap();
        assert_eq!((r["balance_coins"].as_u64(), r["replayed"].as_bool()), (Some(900), Some(false)));
        assert_eq!(r["funding"]["web_coins"], 100);
        let packet_id = r["packet_id"].as_str().unwrap().to_owned();
        let e = event(&mut star, "red_packet").await;
        assert_eq!((e["packet_id"].as_str(), e["from"].as_str(), e["total_coins"].as_u64(), e["shares"].as_u64()),
                   (Some(packet_id.as_str()), Some("bob"), Some(100), Some(3)));
        // A retry of the drop is a replay and debits nothing.
        let again = drop_packet(&mut bob, 100, 3, "rp1").await.unwrap();
        assert_eq!((again["packet_id"].clone(), again["replayed"].as_bool()), (json!(packet_id), Some(true)));

        let mut got = Vec::new();
        for user in ["alice", "carol", "bob"] {
            let mut c = if user == "bob" { std::mem::replace(&mut bob, server.viewer("bob").await) } else { server.viewer(user).await };
            if user != "bob" { c.join("r").await; } else { bob.join("r").await; }
            let g = grab(&mut c, &packet_id).await.unwrap();
            assert_eq!(g["share_index"].as_u64(), Some(got.len() as u64), "{g}");
            let e = event(&mut star, "red_packet_grab").await;
            assert_eq!((e["user"].as_str(), e["coins"].clone()), (Some(user), g["coins"].clone()));
            got.push((user, g["coins"].as_u64().unwrap()));
        }
        assert_eq!(got.iter().map(|g| g.1).sum::<u64>(), 100);
        assert!(got.iter().all(|g| g.1 >= 1));
        let end = event(&mut star, "red_packet_end").await;
        assert_eq!((end["reason"].as_str(), end["grabbed_coins"].as_u64(), end["returned_coins"].as_u64()),
                   (Some("all_taken"), Some(100), Some(0)));
        let summary = bob.next_of("red_packet_summary").await;
        let grabs: Vec<(String, u64)> = summary["grabs"].as_array().unwrap().iter()
            .map(|g| (g["user"].as_str().unwrap().to_owned(), g["coins"].as_u64().unwrap())).collect();
        assert_eq!(grabs, got.iter().map(|(u, c)| (u.to_string(), *c)).collect::<Vec<_>>());

        // Later grabbers: all taken. A repeat by a grabber: the same share again.
        let mut dave = server.viewer("dave").await;
        dave.join("r").await;
        let e = grab(&mut dave, &packet_id).await.unwrap_err();
        assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(13009), Some("red_packet_empty")));
        let mut alice = server.viewer("alice").await;
        alice.join("r").await;
        let g = grab(&mut alice, &packet_id).await.unwrap();
        assert_eq!((g["coins"].as_u64(), g["replayed"].as_bool()), (Some(got[0].1), Some(true)));
        // Grabbed coins count as the channel they were bought through, and are spendable.
        let w = server.wallet("alice").await;
        assert_eq!(w["web_coins"].as_u64(), Some(got[0].1));
        assert_eq!(server.balance("bob").await, 900 + got[2].1);
        let db = audit_clean(&server).await;
        let left = db.ints(&format!(
            "SELECT COALESCE(SUM(balance_coins), 0) FROM accounts WHERE account LIKE {}",
            lit(&format!("packet:{packet_id}:%"))
        )).await;
        assert_eq!(left, vec![0]);
    }
}

on_both_ledgers! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_grabs_from_many_connections_take_each_share_once() {
        let server = TestServer::start().await;
        server.top_up("bob", "ios", 500, "a1").await;
        server.top_up("bob", "android", 500, "g1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let r = drop_packet(&mut bob, 777, 10, "rp").await.unwrap();
        let packet_id = r["packet_id"].as_str().unwrap().to_owned();
        // 30 users, each on two connections, all grab at once.
        let mut clients = Vec::new();
        for u in 0..30 {
            for _ in 0..2 {
                let mut c = server.viewer(&format!("v{u}")).await;
                c.join("r").await;
                clients.push((format!("v{u}"), c));
            }
        }
        let runs = clients.into_iter().map(|(user, mut c)| {
            let packet_id = packet_id.clone();
            async move { (user, grab(&mut c, &packet_id).await) }
        });
        let results = join_all(runs).await;
        let mut fresh: HashMap<String, (u64, u64)> = HashMap::new();
        let mut replays: Vec<(String, u64, u64)> = Vec::new();
        for (user, r) in results {
            match r {
                Ok(g) if g["replayed"] == true => replays.push((user, g["share_index"].as_u64().unwrap(), g["coins"].as_u64().unwrap())),
                Ok(g) => {
                    let prev = fresh.insert(user.clone(), (g["share_index"].as_u64().unwrap(), g["coins"].as_u64().unwrap()));
                    assert!(prev.is_none(), "{user} grabbed twice");
                }
                Err(e) => assert_eq!(e["reason"], "red_packet_empty", "{e}"),
            }
        }
        assert_eq!(fresh.len(), 10, "each share went to one grabber");
        let indexes: HashSet<u64> = fresh.values().map(|v| v.0).collect();
        assert_eq!(indexes, (0..10).collect());
        assert_eq!(fresh.values().map(|v| v.1).sum::<u64>(), 777);
        for (user, index, coins) in replays {
            assert_eq!(fresh[&user], (index, coins), "a replay is the user's own grab");
        }
        let mut total = 0;
        for user in fresh.keys() {
            total += server.balance(user).await;
        }
        assert_eq!(total, 777);
        let db = audit_clean(&server).await;
        assert_eq!(db.ints("SELECT COUNT(*) FROM packet_grabs").await, vec![10]);
    }
}

/// Polls `cond` every 50 ms for up to 10 s.
async fn eventually(mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition never held");
}

on_both_ledgers! {
    #[tokio::test]
    async fn what_nobody_grabbed_goes_back_to_the_sender_at_expiry() {
        let server = TestServer::start_with(|c| {
            c.red_packets.expiry_ms = 1_000;
            c.red_packets.sweep_interval_ms = 100;
        })
        .await;
        server.top_up("bob", "web", 200, "w1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let r = drop_packet(&mut bob, 50, 5, "rp").await.unwrap();
        let packet_id = r["packet_id"].as_str().unwrap().to_owned();
        let mut alice = server.viewer("alice").await;
        alice.join("r").await;
        let g = grab(&mut alice, &packet_id).await.unwrap();
        let grabbed = g["coins"].as_u64().unwrap();
        let end = event(&mut star, "red_packet_end").await;
        assert_eq!((end["reason"].as_str(), end["grabbed_shares"].as_u64(), end["returned_coins"].as_u64()),
                   (Some("expired"), Some(1), Some(50 - grabbed)));
        let summary = bob.next_of("red_packet_summary").await;
        assert_eq!(summary["returned_coins"].as_u64(), Some(50 - grabbed));
        assert_eq!(server.balance("bob").await, 200 - grabbed);
        let e = grab(&mut alice, "p-unknown").await.unwrap_err();
        assert_eq!(e["reason"], "red_packet_not_found");
        let mut carol = server.viewer("carol").await;
        carol.join("r").await;
        let e = grab(&mut carol, &packet_id).await.unwrap_err();
        assert_eq!((e["code"].as_u64(), e["reason"].as_str()), (Some(13010), Some("red_packet_expired")));
        // Later sweeps find nothing more to return.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.balance("bob").await, 200 - grabbed);
        let db = audit_clean(&server).await;
        assert_eq!(db.ints("SELECT COUNT(*) FROM txns WHERE kind = 'packet_return'").await, vec![1]);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn a_packet_outliving_a_restart_is_returned_once_after_it() {
        let server = TestServer::start_with(|c| {
            c.red_packets.expiry_ms = 1_500;
            c.red_packets.sweep_interval_ms = 100;
        })
        .await;
        server.top_up("bob", "android", 300, "g1").await;
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        let mut bob = server.viewer("bob").await;
        bob.join("r").await;
        let r = drop_packet(&mut bob, 120, 4, "rp").await.unwrap();
        let packet_id = r["packet_id"].as_str().unwrap().to_owned();
        let mut alice = server.viewer("alice").await;
        alice.join("r").await;
        let grabbed = grab(&mut alice, &packet_id).await.unwrap()["coins"].as_u64().unwrap();
        drop((star, bob, alice));
        let server = server.restart().await;
        // The packet expires while (or after) the node restarts; the new node's sweeper returns it.
        eventually(async || server.balance("bob").await == 300 - grabbed).await;
        let server = server.restart().await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(server.balance("bob").await, 300 - grabbed);
        assert_eq!(server.wallet("bob").await["android_coins"].as_u64(), Some(300 - grabbed));
        let db = audit_clean(&server).await;
        assert_eq!(db.ints("SELECT COUNT(*) FROM txns WHERE kind = 'packet_return'").await, vec![1]);
    }
}

on_both_ledgers! {
    #[tokio::test]
    async fn bad_drops_are_refused_and_move_nothing() {
        let server = TestServer::start_with(|c| {
            c.red_packets.shares_max = 10;
            c.red_packets.total_coins_max = 1_000;
            c.spending.window_coins_max = 500;
        })
        .await;
        server.top_up("bob", "web", 2_000, "w1").await;
        let mut bob = server.viewer("bob").await;
        let e = drop_packet(&mut bob, 10, 2, "k").await.unwrap_err();
        assert_eq!(e["reason"], "not_in_room");
        let mut star = server.streamer("star").await;
        star.open_room("r", "t").await;
        bob.join("r").await;
        for (total, shares) in [(10, 0), (5, 6), (100, 11), (1_001, 2)] {
            let e = drop_packet(&mut bob, total, shares, "k").await.unwrap_err();
            assert_eq!(e["reason"], "invalid_amount", "{total}/{shares}: {e}");
        }
        let e = drop_packet(&mut bob, 600, 3, "k").await.unwrap_err();
        assert_eq!((e["reason"].as_str(), e["remaining_coins"].as_u64()), (Some("spending_cap_exceeded"), Some(500)));
        let e = bob
            .request(json!({ "type": "drop_red_packet", "total_coins": -5, "shares": 1, "key": "k" }))
            .await
            .unwrap_err();
        assert_eq!(e["reason"], "invalid_message");
        assert_eq!(server.balance("bob").await, 2_000);
        // The streamer may drop one into their own room too.
        server.top_up("star", "ios", 10, "a9").await;
        let r = drop_packet(&mut star, 10, 2, "s1").await.unwrap();
        assert_eq!(r["funding"]["ios_coins"], 10);
        audit_clean(&server).await;
    }
}
