//! Combos and goals in a room across three nodes (docs/ARCHITECTURE.md, "Cluster"): gifts sent
//! on other nodes are committed and numbered by the room's node, so they grow combos and move
//! the goal there; goal commands from the streamer's console on another node are forwarded to
//! it; every member, on any node, sees each combo end exactly once and the goal's progress equal
//! to the ledger's committed gifts.

mod mechanics;
mod support;

use std::time::Duration;

use mechanics::{check_combos, check_goals_after, events_until, of};
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
