//! Combos, goals and PK battles across nodes (docs/ARCHITECTURE.md, "Cluster"): gifts sent
//! on other nodes are committed and numbered by the room's node, so they grow combos and move
//! the goal there; goal commands from the streamer's console on another node are forwarded to
//! it; every member, on any node, sees each combo end exactly once and the goal's progress equal
//! to the ledger's committed gifts. When the room's node is killed, the node that takes the
//! room over continues its open combo and its goal from the kept events.

mod mechanics;
mod support;

use std::time::Duration;

use mechanics::{check_combos, check_goals_after, check_pk, events_until, of};
use serde_json::json;
use support::cluster::TestCluster;

const WINDOW_MS: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gifts_from_other_nodes_move_the_goal_and_each_combo_ends_once() {
    let mut cluster = TestCluster::start_with(3, |c| c.rooms.combo_window_ms = WINDOW_MS).await;
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    for (node, user) in [(b, "vb"), (c, "vc")] {
        node.top_up(user, "web", 1_000, &format!("p-{user}")).await;
    }
    let mut star = a.streamer("star").await;
    star.open_room("r", "Live").await;
    // The streamer's console on node B sets the goal: the command is forwarded to node A.
    let mut console = b.streamer("star").await;
    console.join("r").await;
    let set = console
        .ok(json!({ "type": "set_goal", "target_coins": 300 }))
        .await;
    let goal_id = set["seq"].as_u64().unwrap();
    assert_eq!(set["goal"]["goal_id"], goal_id);

    let mut watcher = c.viewer("watcher").await;
    assert_eq!(watcher.join("r").await["goal"], set["goal"]);
    let mut vb = b.viewer("vb").await;
    vb.join("r").await;
    let mut vc = c.viewer("vc").await;
    vc.join("r").await;
    for k in 0..3 {
        vb.send_gift("coffee", &format!("b{k}")).await.unwrap();
    }
    vc.send_gift("rose", "c0").await.unwrap();
    vc.send_gift("rose", "c1").await.unwrap();
    vc.send_gift("heart", "c2").await.unwrap();

    // The coffee combo lapses, the rose combo ended at the heart; then nothing more ends.
    let events = events_until(
        &mut watcher,
        Duration::from_millis(WINDOW_MS + 1_000),
        |seen| of(seen, "combo_end").len() >= 2 && !of(seen, "goal_reached").is_empty(),
    )
    .await;
    let tally = check_combos(&events);
    let mut ended = tally.ended.clone();
    ended.sort();
    assert_eq!(
        ended,
        [
            ("vb".to_owned(), "coffee".to_owned(), 3, 300),
            ("vc".to_owned(), "rose".to_owned(), 2, 2)
        ]
    );
    assert_eq!(tally.open, 0);
    assert_eq!(of(&events, "goal_reached").len(), 1);

    let done = console.ok(json!({ "type": "end_goal" })).await;
    let paid = 2_000 - a.balance("vb").await - a.balance("vc").await;
    assert_eq!(paid, 307);
    assert_eq!(done["goal"]["progress_coins"], paid);
    assert_eq!(done["goal"]["reached"], true);
    let more = events_until(&mut watcher, Duration::ZERO, |seen| {
        seen.iter().any(|e| e["seq"] == done["seq"])
    })
    .await;
    let all: Vec<_> = events.into_iter().chain(more).collect();
    let finals = check_goals_after(Some(&set["goal"]), &all);
    assert_eq!(finals[&goal_id], paid);
    // The room's node counted each combo once, whichever node its gifts came from.
    assert_eq!(a.metric("giftd_combos_total").await, 2.0);
    cluster.shutdown().await;
}

/// Sends `sticker` with `key` until it is acknowledged, through a takeover's unavailability.
async fn gift_until_acked(
    client: &mut support::Client,
    sticker: &str,
    key: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.send_gift(sticker, key).await {
            Ok(receipt) => return receipt,
            Err(e) => {
                let retryable = ["room_unavailable", "room_busy", "ledger_unavailable"];
                assert!(
                    retryable.contains(&e["reason"].as_str().unwrap_or("")),
                    "{e}"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "no receipt for {key}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_combo_the_goal_and_the_leaderboards_survive_a_takeover() {
    let window_ms = 8_000;
    let mut cluster = TestCluster::start_with(2, |c| c.rooms.combo_window_ms = window_ms).await;
    let mut owner = cluster.spawn_process("owner").await;
    let (b, c) = (&cluster.nodes[0], &cluster.nodes[1]);
    b.top_up("fan", "web", 1_000, "p-fan").await;
    let mut star = owner.connect("star", giftd::auth::Role::Streamer).await;
    star.open_room("r", "Live").await;
    let mut watcher = b.viewer("watcher").await;
    watcher.join("r").await;
    let mut fan = b.viewer("fan").await;
    fan.join("r").await;
    let set = star
        .ok(json!({ "type": "set_goal", "target_coins": 100 }))
        .await;
    let goal_id = set["seq"].as_u64().unwrap();
    let mut last = 0;
    for k in 0..3 {
        last = fan.send_gift("heart", &format!("k{k}")).await.unwrap()["seq"]
            .as_u64()
            .unwrap();
    }
    // Every gift reached the other node before the owner dies.
    let before = events_until(&mut watcher, Duration::ZERO, |seen| {
        seen.iter().any(|e| e["seq"].as_u64() == Some(last))
    })
    .await;
    owner.kill();
    let after = gift_until_acked(&mut fan, "heart", "k3").await;
    assert!(after["seq"].as_u64() > Some(last), "{after}");

    // The streamer, back on a surviving node, finds the goal with every gift counted.
    let mut star = c.streamer("star").await;
    let snapshot = star.join("r").await;
    assert_eq!(snapshot["goal"]["goal_id"], goal_id, "{snapshot}");
    assert_eq!(snapshot["goal"]["progress_coins"], 20, "{snapshot}");
    // The session's leaderboard came back from the ledger: every heart, before and after.
    let fan_20 = json!([{ "rank": 1, "user": "fan", "coins": 20 }]);
    assert_eq!(snapshot["leaderboards"]["session"], fan_20, "{snapshot}");
    let session = star
        .ok(json!({ "type": "leaderboard", "board": "session", "around": "fan" }))
        .await;
    assert_eq!(session["around"], fan_20);
    let done = star.ok(json!({ "type": "end_goal" })).await;
    assert_eq!(
        done["goal"]["progress_coins"],
        1_000 - b.balance("fan").await
    );

    // The watcher saw everything gap-free, the takeover included: the four hearts' combo (or
    // combos, if the takeover outlasted the window) each ended exactly once.
    let hearts = |seen: &[serde_json::Value]| -> u64 {
        of(seen, "combo_end")
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    };
    let rest = events_until(
        &mut watcher,
        Duration::from_millis(window_ms + 1_000),
        |seen| seen.iter().any(|e| e["seq"] == done["seq"]) && hearts(seen) == 4,
    )
    .await;
    let events: Vec<_> = before.into_iter().chain(rest).collect();
    let tally = check_combos(&events);
    assert_eq!(tally.open, 0);
    assert!(
        tally.ended.iter().all(|e| e.0 == "fan" && e.1 == "heart"),
        "{tally:?}"
    );
    assert_eq!(hearts(&events), 4);
    let finals = mechanics::check_goals(&events);
    assert_eq!(finals[&goal_id], 20);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pk_battle_between_rooms_on_two_nodes_survives_a_takeover_and_ends_once() {
    let battle_ms = 10_000;
    let mut cluster = TestCluster::start_with(2, |c| c.rooms.pk_duration_ms = battle_ms).await;
    let mut owner = cluster.spawn_process("owner").await;
    let (b, c) = (&cluster.nodes[0], &cluster.nodes[1]);
    for fan in ["va", "vb"] {
        b.top_up(fan, "web", 1_000, &format!("p-{fan}")).await;
    }
    // Room a runs on the process that will be killed, room b on node B.
    let mut ann = owner.connect("ann", giftd::auth::Role::Streamer).await;
    ann.open_room("a", "A").await;
    let mut bo = b.streamer("bo").await;
    bo.open_room("b", "B").await;
    // Watchers and fans on node C and B see the rooms through replicas.
    let (mut wa, mut wb) = (c.viewer("wa").await, c.viewer("wb").await);
    wa.join("a").await;
    wb.join("b").await;
    let (mut va, mut vb) = (b.viewer("va").await, c.viewer("vb").await);
    va.join("a").await;
    vb.join("b").await;

    let invited = ann.ok(json!({ "type": "pk_challenge", "room": "b" })).await;
    let id = invited["battle"]["battle_id"].as_str().unwrap().to_owned();
    // Node B learnt of the challenge from node "owner": room b shows it.
    let mut b_events = events_until(&mut wb, Duration::ZERO, |seen| {
        !of(seen, "pk_invite").is_empty()
    })
    .await;
    // bo answers from a console on node C: forwarded to node B, which tells node "owner".
    let mut console = c.streamer("bo").await;
    assert_eq!(console.join("b").await["pk"]["battle_id"], id.as_str());
    console
        .ok(json!({ "type": "pk_accept", "battle_id": id }))
        .await;
    for k in 0..2 {
        va.send_gift("clap", &format!("a{k}")).await.unwrap();
    }
    vb.send_gift("heart", "b0").await.unwrap();
    // Room a showed the clap score before its node dies.
    let mut a_events = events_until(&mut wa, Duration::ZERO, |seen| {
        of(seen, "pk_score")
            .iter()
            .any(|e| e["battle"]["challenger"]["score_coins"] == 20)
    })
    .await;
    owner.kill();
    gift_until_acked(&mut va, "clap", "a2").await;

    a_events.extend(
        events_until(&mut wa, Duration::ZERO, |seen| {
            !of(seen, "pk_ended").is_empty()
        })
        .await,
    );
    b_events.extend(
        events_until(&mut wb, Duration::ZERO, |seen| {
            !of(seen, "pk_ended").is_empty()
        })
        .await,
    );
    let a_end = check_pk("a", &a_events).ended;
    let b_end = check_pk("b", &b_events).ended;
    assert_eq!(a_end.len(), 1, "{a_events:?}");
    assert_eq!(a_end, b_end);
    assert_eq!(a_end[0]["battle_id"], id.as_str());
    assert_eq!(a_end[0]["reason"], "time_up");
    assert_eq!(
        a_end[0]["challenger"]["score_coins"], 30,
        "the gift after the takeover counts"
    );
    assert_eq!(a_end[0]["opponent"]["score_coins"], 5);
    assert_eq!(a_end[0]["winner"], "a");
    cluster.shutdown().await;
}
