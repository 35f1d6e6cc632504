//! One room across several giftd nodes over the real NATS and one PostgreSQL ledger
//! (docs/ARCHITECTURE.md, "Cluster"). The room runs on the node where it was opened; viewers on
//! every node see every event in the same `seq` order, commands from any node get the same acks
//! and receipts as on the room's own node, and private messages, viewer counts, closing and
//! recovery work across nodes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::TestCluster;
use support::Client;

/// Reads events until one with `seq`, returning every event (viewer counts included).
async fn events_through(client: &mut Client, seq: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    // Bounded: the events asked for plus the viewer counts between them.
    for _ in 0..10_000 {
        let e = client.next_event().await;
        let s = e["seq"].as_u64().unwrap();
        seen.push(e);
        if s >= seq {
            return seen;
        }
    }
    panic!("never reached seq {seq}");
}

/// The positions of `events`, which must be consecutive.
fn assert_gap_free(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or duplicate in {seqs:?}");
    }
}

/// Each receipt's gift is the event at the receipt's `seq`, for every receipt `events` covers.
fn assert_receipts_at_their_positions(events: &[Value], receipts: &[Value]) {
    let at: HashMap<u64, &Value> = events
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    let first = events[0]["seq"].as_u64().unwrap();
    for r in receipts {
        let seq = r["seq"].as_u64().unwrap();
        if seq >= first {
            assert_eq!(at[&seq]["gift_id"], r["gift_id"], "{r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_across_three_nodes_is_one_room() {
    let mut cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    for (node, user) in [(a, "va"), (b, "vb"), (c, "vc")] {
        node.top_up(user, "web", 10_000, &format!("p-{user}")).await;
    }
    let mut star = a.streamer("star").await;
    let opened = star.open_room("r", "Live").await;
    let epoch = opened["epoch"].as_str().unwrap().to_owned();

    let mut viewers = Vec::new();
    for (node, user) in [(a, "va"), (b, "vb"), (c, "vc")] {
        let mut v = node.viewer(user).await;
        let snapshot = v.join("r").await;
        assert_eq!(snapshot["epoch"], epoch.as_str(), "{snapshot}");
        assert_eq!(snapshot["streamer"], "star");
        viewers.push(v);
    }

    // Gifts from every node, the room's own first.
    let mut receipts = Vec::new();
    for (i, v) in viewers.iter_mut().enumerate() {
        for k in 0..5 {
            let r = v.send_gift("rose", &format!("k{i}-{k}")).await.unwrap();
            assert_eq!(r["replayed"], false, "{r}");
            assert!(r["seq"].as_u64().unwrap() >= 1, "{r}");
            receipts.push(r);
        }
    }
    let last_gift_seq = receipts
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .max()
        .unwrap();

    // Every viewer sees the same gifts in the same order, gap-free.
    let mut orders = Vec::new();
    for v in viewers.iter_mut() {
        let events = events_through(v, last_gift_seq).await;
        assert_gap_free(&events);
        let gifts: Vec<(u64, String)> = events
            .iter()
            .filter(|e| e["kind"] == "gift")
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["gift_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(gifts.len(), 15, "{events:?}");
        orders.push(gifts);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
    // The receipts' positions are the events' positions.
    let by_id: HashMap<&str, u64> = receipts
        .iter()
        .map(|r| (r["gift_id"].as_str().unwrap(), r["seq"].as_u64().unwrap()))
        .collect();
    for (seq, id) in &orders[0] {
        assert_eq!(by_id[id.as_str()], *seq);
    }

    // The streamer's private split of each gift reaches its connections on every node.
    let mut console = b.streamer("star").await;
    let late = viewers[2].send_gift("rose", "k-late").await.unwrap();
    let earned = console.next_of("gift_received").await;
    assert_eq!(earned["gift_id"], late["gift_id"]);
    assert_eq!(earned["streamer_coins"], late["streamer_coins"]);

    // The thank-you for a gift sent on node C reaches its sender there.
    let from_c = receipts[10]["gift_id"].as_str().unwrap().to_owned();
    let thanked = star
        .ok(json!({ "type": "thank", "gift_id": from_c, "text": "ty C" }))
        .await;
    assert_eq!(thanked["to"], "vc");
    let thanks = viewers[2].next_of("thanks").await;
    assert_eq!(
        (thanks["gift_id"].as_str(), thanks["text"].as_str()),
        (Some(from_c.as_str()), Some("ty C"))
    );

    // A question asked on node B, answered by the streamer on node A, reaches its asker on B.
    let asked = viewers[1]
        .ok(json!({ "type": "ask", "text": "where are you?" }))
        .await;
    let question_id = asked["question_id"].as_u64().unwrap();
    star.ok(json!({ "type": "answer", "question_id": question_id, "text": "Lisbon" }))
        .await;
    let answered = viewers[1].next_of("answered").await;
    assert_eq!(answered["question_id"], question_id);

    // The viewer count is the cluster's: three viewers on three nodes.
    let mut count = 0;
    for _ in 0..200 {
        let e = star.next_event().await;
        if e["kind"] == "viewers" {
            count = e["count"].as_u64().unwrap();
            if count == 3 {
                break;
            }
        }
    }
    assert_eq!(count, 3);
    // A second device of a viewer is one more viewer connection but not one more user.
    let mut second = a.viewer("va").await;
    let snapshot = second.join("r").await;
    assert_eq!(
        (snapshot["viewers"].as_u64(), snapshot["users"].as_u64()),
        (Some(4), Some(3)),
        "{snapshot}"
    );
    drop(second);

    // Every node lists the room, with the cluster's viewers.
    for node in [a, b, c] {
        let mut listed = Value::Null;
        for _ in 0..50 {
            let (status, body) = node.http("GET", "/rooms", None, None).await;
            assert_eq!(status, 200, "{body}");
            listed = serde_json::from_str(&body).unwrap();
            if listed["rooms"][0]["viewers"] == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(listed["rooms"][0]["room"], "r", "{listed}");
        assert_eq!(listed["rooms"][0]["viewers"], 3, "{listed}");
    }

    // Money: every gift was charged once, on the one ledger.
    let rose = a.price("rose").await;
    for user in ["va", "vb", "vc"] {
        let late = if user == "vc" { rose } else { 0 };
        assert_eq!(a.balance(user).await, 10_000 - 5 * rose - late, "{user}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_opening_the_same_room_at_once_one_wins() {
    let mut cluster = TestCluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    for round in 0..5 {
        let room = format!("r{round}");
        let mut on_a = a.streamer("star").await;
        let mut on_b = b.streamer("star").await;
        let open = |room: &str| json!({ "type": "open_room", "room": room, "title": "t" });
        let (ra, rb) = tokio::join!(on_a.request(open(&room)), on_b.request(open(&room)));
        let (won, lost) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("exactly one open must win: {other:?}"),
        };
        assert_eq!(won["room"], room.as_str());
        assert_eq!(
            (lost["code"].as_u64(), lost["reason"].as_str()),
            (Some(13002), Some("room_exists")),
            "{lost}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_two_nodes_at_once_debits_once() {
    let mut cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    a.top_up("bob", "web", 10_000, "p1").await;
    let mut star = a.streamer("star").await;
    star.open_room("r", "t").await;
    let mut on_b = b.viewer("bob").await;
    on_b.join("r").await;
    let mut on_c = c.viewer("bob").await;
    on_c.join("r").await;
    for round in 0..10 {
        let key = format!("k{round}");
        let (rb, rc) = tokio::join!(
            on_b.send_gift("coffee", &key),
            on_c.send_gift("coffee", &key)
        );
        let (rb, rc) = (rb.unwrap(), rc.unwrap());
        assert_eq!(rb["gift_id"], rc["gift_id"], "{rb} {rc}");
        assert_eq!(rb["seq"], rc["seq"], "{rb} {rc}");
        let replays = [&rb, &rc].iter().filter(|r| r["replayed"] == true).count();
        assert_eq!(replays, 1, "{rb} {rc}");
    }
    let coffee = a.price("coffee").await;
    assert_eq!(a.balance("bob").await, 10_000 - 10 * coffee);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_from_another_node_reaches_every_node() {
    let mut cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let mut star = a.streamer("star").await;
    star.open_room("r", "t").await;
    let mut viewers = Vec::new();
    for (node, user) in [(a, "va"), (b, "vb"), (c, "vc")] {
        let mut v = node.viewer(user).await;
        v.join("r").await;
        viewers.push(v);
    }
    // The streamer's second device, on node B, closes the room.
    let mut console = b.streamer("star").await;
    console.join("r").await;
    let closed = console.ok(json!({ "type": "close_room" })).await;
    let last = closed["seq"].as_u64().unwrap();
    for v in viewers.iter_mut().chain([&mut star, &mut console]) {
        let e = v.next_event_of("room_closed").await;
        assert_eq!(e["seq"], last);
    }
    // The room is gone everywhere, and its id can be opened again, with a new epoch.
    for node in [a, b, c] {
        let mut late = node.viewer("late").await;
        let e = late
            .request(json!({ "type": "join", "room": "r" }))
            .await
            .unwrap_err();
        assert_eq!(e["reason"], "room_not_found", "{e}");
    }
    let mut again = c.streamer("star").await;
    again.open_room("r", "again").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_moves_to_another_node_recovers_what_it_missed() {
    let mut cluster = TestCluster::start(3).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    a.top_up("fan", "web", 100_000, "p1").await;
    let mut star = a.streamer("star").await;
    let opened = star.open_room("r", "t").await;
    let epoch = opened["epoch"].as_str().unwrap().to_owned();
    let mut fan = a.viewer("fan").await;
    fan.join("r").await;
    let mut bob = b.viewer("bob").await;
    bob.join("r").await;
    let first = fan.send_gift("rose", "k0").await.unwrap();
    let seen = events_through(&mut bob, first["seq"].as_u64().unwrap()).await;
    let last_seen = seen.last().unwrap()["seq"].as_u64().unwrap();
    drop(bob);

    // 100 events go by while bob is away.
    let mut last = 0;
    for k in 1..=100 {
        let r = fan.send_gift("rose", &format!("k{k}")).await.unwrap();
        last = r["seq"].as_u64().unwrap();
    }

    // Bob comes back on node C with his position and gets every event he missed, in order.
    let mut bob = c.viewer("bob").await;
    let ack = bob
        .ok(json!({ "type": "join", "room": "r", "since": { "epoch": epoch, "seq": last_seen } }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    assert_eq!(ack["seq"], last_seen);
    let events = events_through(&mut bob, last).await;
    assert_eq!(events[0]["seq"].as_u64().unwrap(), last_seen + 1);
    assert_gap_free(&events);
    let gifts = events.iter().filter(|e| e["kind"] == "gift").count();
    assert_eq!(gifts, 100);

    // Then live events follow, with no gap.
    let next = fan.send_gift("rose", "k-live").await.unwrap();
    let live = events_through(&mut bob, next["seq"].as_u64().unwrap()).await;
    assert_eq!(live[0]["seq"].as_u64().unwrap(), last + 1);
    assert_gap_free(&live);
    cluster.shutdown().await;
}

/// Sends gift `key` until it gets a receipt, through outages (bounded: 30 s).
async fn gift_until_acked(client: &mut Client, key: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.send_gift("rose", key).await {
            Ok(receipt) => return receipt,
            Err(e) => {
                let retryable = ["room_unavailable", "room_busy", "ledger_unavailable"];
                assert!(
                    retryable.contains(&e["reason"].as_str().unwrap_or("")),
                    "{e}"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "no receipt for {key} in 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_rooms_node_is_killed_another_takes_the_room_over() {
    let mut cluster = TestCluster::start(2).await;
    let mut owner = cluster.spawn_process("owner").await;
    let (b, c) = (&cluster.nodes[0], &cluster.nodes[1]);
    b.top_up("fan", "web", 100_000, "p1").await;
    let mut star = owner.connect("star", giftd::auth::Role::Streamer).await;
    let opened = star.open_room("r", "Live").await;
    let epoch = opened["epoch"].as_str().unwrap().to_owned();
    let mut on_owner = owner.connect("va", giftd::auth::Role::Viewer).await;
    on_owner.join("r").await;
    let mut vb = b.viewer("vb").await;
    vb.join("r").await;
    let mut vc = c.viewer("vc").await;
    vc.join("r").await;
    let mut fan = b.viewer("fan").await;
    fan.join("r").await;
    let asked = fan
        .ok(json!({ "type": "ask", "text": "still there?" }))
        .await;

    // Gifts before the kill, then the kill -9, then gifts that wait for the takeover.
    let mut receipts = Vec::new();
    for k in 0..20 {
        receipts.push(gift_until_acked(&mut fan, &format!("k{k}")).await);
    }
    let seen_on_owner = events_through(&mut on_owner, receipts[9]["seq"].as_u64().unwrap()).await;
    let owner_last_seen = seen_on_owner.last().unwrap()["seq"].as_u64().unwrap();
    owner.kill();
    for k in 20..40 {
        receipts.push(gift_until_acked(&mut fan, &format!("k{k}")).await);
    }
    let last = receipts
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();

    // Viewers on the surviving nodes saw every event, the takeover included, gap-free, and
    // every receipt's gift at its position.
    for v in [&mut vb, &mut vc] {
        let events = events_through(v, last).await;
        assert_gap_free(&events);
        assert_eq!(events[0]["epoch"], epoch.as_str());
        assert_receipts_at_their_positions(&events, &receipts);
    }

    // The viewer whose node died re-joins elsewhere with its position and recovers.
    let mut va = c.viewer("va").await;
    let ack = va
        .ok(json!({ "type": "join", "room": "r", "since": { "epoch": epoch, "seq": owner_last_seen } }))
        .await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let recovered = events_through(&mut va, last).await;
    assert_eq!(recovered[0]["seq"].as_u64().unwrap(), owner_last_seen + 1);
    assert_gap_free(&recovered);

    // The room's state survived: the question is still open and can be answered from any node,
    // and the streamer, back on a surviving node, thanks a gift sent before the kill.
    let mut star = c.streamer("star").await;
    let snapshot = star.join("r").await;
    let open: Vec<u64> = snapshot["questions_open"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        open,
        vec![asked["question_id"].as_u64().unwrap()],
        "{snapshot}"
    );
    star.ok(json!({ "type": "answer", "question_id": asked["question_id"], "text": "yes" }))
        .await;
    star.ok(json!({ "type": "thank", "gift_id": receipts[5]["gift_id"] }))
        .await;
    assert_eq!(
        fan.next_of("thanks").await["gift_id"],
        receipts[5]["gift_id"]
    );

    // Money: each key charged once, and the ledger audits clean.
    let rose = b.price("rose").await;
    assert_eq!(b.balance("fan").await, 100_000 - 40 * rose);
    let db = support::ledger::LedgerDb::open(&b.config).await;
    let report = db.audit().await;
    assert!(report.violations.is_empty(), "{report:?}");
    assert_eq!(report.gifts, 40);
    assert_eq!(
        b.metric("giftd_cluster_takeovers_total").await
            + c.metric("giftd_cluster_takeovers_total").await,
        1.0
    );
    cluster.shutdown().await;
}

/// Sends gift `key` as "fan" until it gets a receipt, the way a client app does through
/// outages: on a retryable error it waits and resends; when its connection ends (close 4002, or
/// its node's NATS trouble), it reconnects, re-joins and resends the same key. Bounded: 30 s.
async fn resend_until_acked(node: &support::TestServer, fan: &mut Client, key: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no receipt for {key} in 30 s"
        );
        let body = json!({ "type": "send_gift", "sticker": "rose", "key": key });
        match fan.try_request(body).await {
            Some(Ok(receipt)) => return receipt,
            Some(Err(e)) => {
                let retryable = ["room_unavailable", "room_busy", "ledger_unavailable"];
                assert!(
                    retryable.contains(&e["reason"].as_str().unwrap_or("")),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => {
                *fan = node.viewer("fan").await;
                // The room may be unavailable for a while (its node's NATS is down): the app
                // retries the join before it resends, since a gift outside the room is refused.
                while let Err(e) = fan.request(json!({ "type": "join", "room": "r" })).await {
                    assert_eq!(e["reason"], "room_unavailable", "{e}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "could not re-join for {key} in 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Follows room `r` as `user` on `node` through to event `last`, the way a client app does:
/// when its connection ends (close 4002 `resync`, or NATS trouble on its node), it reconnects
/// and re-joins with the last position it saw. Returns every event seen, in order.
async fn follow_through(
    node: &support::TestServer,
    user: &str,
    client: &mut Client,
    epoch: &str,
    mut last_seen: u64,
    last: u64,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut rejoins = 0;
    while last_seen < last {
        match client.try_next_event().await {
            Some(e) => {
                last_seen = e["seq"].as_u64().unwrap();
                seen.push(e);
            }
            None => {
                rejoins += 1;
                assert!(rejoins <= 10, "more than 10 re-joins");
                *client = node.viewer(user).await;
                let since = json!({ "epoch": epoch, "seq": last_seen });
                let ack = client
                    .ok(json!({ "type": "join", "room": "r", "since": since }))
                    .await;
                assert_eq!(ack["recovered"], true, "{ack}");
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load_loses_nothing_acknowledged() {
    let mut nats = support::cluster::OwnNats::start().await;
    let url = nats.url();
    let mut cluster = TestCluster::start_with(2, |c| {
        c.cluster.nats_url = url.clone();
        // Rides through the restart below without the owner letting the room go.
        c.cluster.lease_ms = 6_000;
        c.cluster.request_timeout_ms = 1_000;
    })
    .await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    b.top_up("fan", "web", 100_000, "p1").await;
    let mut star = a.streamer("star").await;
    let epoch = star.open_room("r", "t").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut on_b = b.viewer("vb").await;
    on_b.join("r").await;
    let mut fan = b.viewer("fan").await;
    fan.join("r").await;

    let mut receipts = Vec::new();
    for k in 0..10 {
        receipts.push(resend_until_acked(b, &mut fan, &format!("k{k}")).await);
    }
    nats.restart(Duration::from_millis(500)).await;
    for k in 10..30 {
        receipts.push(resend_until_acked(b, &mut fan, &format!("k{k}")).await);
    }
    let last = receipts
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();

    // The viewer on the other node, re-joining when sent away, saw every event, gap-free.
    let events = follow_through(b, "vb", &mut on_b, &epoch, 0, last).await;
    assert_gap_free(&events);
    let gifts: Vec<&Value> = events.iter().filter(|e| e["kind"] == "gift").collect();
    assert_eq!(gifts.len(), 30);
    // The room's own node kept it, and its members saw every event without a break.
    let on_a = events_through(&mut star, last).await;
    assert_gap_free(&on_a);

    // Each key was charged once; the ledger audits clean.
    let rose = b.price("rose").await;
    assert_eq!(b.balance("fan").await, 100_000 - 30 * rose);
    let report = support::ledger::LedgerDb::open(&b.config)
        .await
        .audit()
        .await;
    assert!(report.violations.is_empty(), "{report:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_red_packet_across_nodes_is_grabbed_once_per_user_and_ends_once_everywhere() {
    let mut cluster = TestCluster::start_with(3, |c| {
        c.red_packets.expiry_ms = 1_500;
        c.red_packets.sweep_interval_ms = 100;
    })
    .await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    b.top_up("bob", "web", 1_000, "p1").await;
    let mut star = a.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = b.viewer("bob").await;
    bob.join("r").await;
    let dropped = bob
        .ok(json!({ "type": "drop_red_packet", "total_coins": 100, "shares": 3, "key": "rp1" }))
        .await;
    let packet_id = dropped["packet_id"].as_str().unwrap().to_owned();

    // Two grabbers, each with a connection on two nodes grabbing at once: one share each.
    let mut grabbed = 0;
    for user in ["amy", "cat"] {
        let mut on_b = b.viewer(user).await;
        on_b.join("r").await;
        let mut on_c = c.viewer(user).await;
        on_c.join("r").await;
        let grab = json!({ "type": "grab_red_packet", "packet_id": packet_id });
        let (x, y) = tokio::join!(on_b.request(grab.clone()), on_c.request(grab));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x["coins"], y["coins"], "{x} {y}");
        assert_eq!([&x, &y].iter().filter(|g| g["replayed"] == true).count(), 1);
        grabbed += x["coins"].as_u64().unwrap();
    }

    // The third share expires: its coins go back to bob once, and every node's members see
    // the end once, whichever node's sweeper returned it.
    for member in [&mut star, &mut bob] {
        let mut ends = 0;
        let mut grabs = 0;
        loop {
            let e = member.next_event().await;
            match e["kind"].as_str() {
                Some("red_packet_grab") => grabs += 1,
                Some("red_packet_end") => {
                    ends += 1;
                    assert_eq!(e["reason"], "expired", "{e}");
                    assert_eq!(e["returned_coins"].as_u64().unwrap(), 100 - grabbed);
                    break;
                }
                _ => {}
            }
        }
        assert_eq!((grabs, ends), (2, 1));
    }
    assert_eq!(
        bob.next_of("red_packet_summary").await["packet_id"],
        packet_id.as_str()
    );
    assert_eq!(b.balance("bob").await, 1_000 - grabbed);
    let report = support::ledger::LedgerDb::open(&b.config)
        .await
        .audit()
        .await;
    assert!(report.violations.is_empty(), "{report:?}");
    cluster.shutdown().await;
}

/// Every event of epoch `epoch` the room's JetStream stream holds, in stream order, as
/// `(seq, gift_id)`.
async fn stream_events(cluster: &TestCluster, room: &str, epoch: &str) -> Vec<(u64, Value)> {
    let client = async_nats::connect(support::cluster::nats_url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}_events", cluster.namespace))
        .await
        .unwrap();
    let subject = format!("{}.room.{room}.events", cluster.namespace);
    let mut events = Vec::new();
    let mut next = stream.direct_get_first_for_subject(subject.clone()).await;
    // Bounded: the stream keeps at most `rooms.history_events_max` events per room.
    for _ in 0..=10_000 {
        let Ok(message) = next else { break };
        let event: Value = serde_json::from_slice(&message.payload).unwrap();
        if event["epoch"] == epoch {
            events.push((event["seq"].as_u64().unwrap(), event["gift_id"].clone()));
        }
        next = stream
            .direct_get_next_for_subject(subject.clone(), Some(message.sequence + 1))
            .await;
    }
    events
}

/// Split brain: the room's node loses NATS (a proxy in front of it is cut) while it and the
/// other nodes go on. It must stop taking commands before its lease can lapse (refusing them
/// before any money moves), another node takes the room over, and when the cut heals, the
/// events the old owner numbered while cut off never reach the room: every `seq` is in the
/// room's stream once, and viewers elsewhere see one gap-free sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_stops_sequencing_and_its_late_events_never_reach_the_room() {
    let nats = support::cluster::nats_url();
    let target = nats.trim_start_matches("nats://").to_owned();
    let proxy = support::proxy::Proxy::start(target).await;
    let proxied = format!("nats://{}", proxy.addr);
    let mut cluster = TestCluster::start_with(3, |c| {
        if c.cluster.node_id == "n0" {
            c.cluster.nats_url = proxied.clone();
        }
    })
    .await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    a.top_up("va", "web", 100_000, "p-va").await;
    b.top_up("fan", "web", 100_000, "p-fan").await;
    let mut star = a.streamer("star").await;
    let epoch = star.open_room("r", "Live").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut va = a.viewer("va").await;
    va.join("r").await;
    let mut vb = b.viewer("vb").await;
    vb.join("r").await;
    let mut vc = c.viewer("vc").await;
    vc.join("r").await;
    let mut fan = b.viewer("fan").await;
    fan.join("r").await;
    let mut receipts = Vec::new();
    for k in 0..5 {
        receipts.push(gift_until_acked(&mut fan, &format!("k{k}")).await);
    }

    proxy.cut();
    let rose = b.price("rose").await;
    let before = a.balance("va").await;
    let mut accepted = 0;
    let refused = loop {
        assert!(
            accepted < 200,
            "the cut-off owner never stopped taking gifts"
        );
        let gift =
            json!({ "type": "send_gift", "sticker": "rose", "key": format!("late{accepted}") });
        match va.try_request(gift).await {
            Some(Ok(_)) => accepted += 1,
            Some(Err(e)) => break Some(e),
            None => break None, // closed: the room was given up without a fence
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = refused.expect("refused before the room was given up");
    assert_eq!(refused["reason"], "room_unavailable", "{refused}");
    assert_eq!(
        a.balance("va").await,
        before - accepted * rose,
        "the refused gift was not charged"
    );
    assert_eq!(
        va.closed().await.code,
        4002,
        "the cut-off owner gives the room up"
    );

    // Another node takes over; gifts go on through it.
    for k in 5..10 {
        receipts.push(gift_until_acked(&mut fan, &format!("k{k}")).await);
    }
    proxy.heal();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while a.metric("giftd_cluster_connected").await != 1.0 {
        assert!(std::time::Instant::now() < deadline, "n0 did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever the old owner still had queued had its chance to go out before these.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for k in 10..15 {
        receipts.push(gift_until_acked(&mut fan, &format!("k{k}")).await);
    }
    let last = receipts
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap();

    let stored = stream_events(&cluster, "r", &epoch).await;
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|p| p[1] == p[0] + 1),
        "every seq once, in order: {seqs:?}"
    );
    // After the last receipt's gift, only what the room ticker publishes (leaderboards): no late
    // gift of the cut-off owner.
    let at = seqs
        .iter()
        .position(|s| *s == last)
        .expect("the last gift is stored");
    assert!(
        stored[at + 1..]
            .iter()
            .all(|(_, gift_id)| gift_id.is_null()),
        "no gift after the last receipt: {stored:?}"
    );
    for v in [&mut vb, &mut vc] {
        let events = events_through(v, last).await;
        assert_gap_free(&events);
        assert_receipts_at_their_positions(&events, &receipts);
    }
    let audit = support::ledger::LedgerDb::open(&b.config)
        .await
        .audit()
        .await;
    assert!(audit.violations.is_empty(), "{audit:?}");
    assert!(a.metric("giftd_cluster_commands_fenced_total").await >= 1.0);
    cluster.shutdown().await;
    drop(proxy);
}
