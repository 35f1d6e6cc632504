//! Fan-out: every member sees every event once, in sequence order. (A member that cannot keep up
//! is dropped without holding up the room: `tests/slow_consumers.rs`.)

mod support;

use support::TestServer;

#[tokio::test]
async fn sequence_numbers_are_gap_free_for_every_member() {
    let server = TestServer::start().await;
    server.top_up("bob", "web", 10_000, "w").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut viewers = Vec::new();
    for i in 0..10 {
        let mut v = server.viewer(&format!("v{i}")).await;
        v.join("r").await;
        viewers.push(v);
    }
    let mut bob = server.viewer("bob").await;
    bob.join("r").await;
    let mut gift_ids = Vec::new();
    for i in 0..100 {
        gift_ids.push(bob.send_gift("clap", &format!("k{i}")).await.unwrap()["gift_id"].clone());
    }
    for v in viewers.iter_mut() {
        let mut last_seq = None;
        let mut seen = Vec::new();
        while seen.len() < gift_ids.len() {
            let e = v.next_event().await;
            let seq = e["seq"].as_u64().unwrap();
            if let Some(prev) = last_seq {
                assert_eq!(seq, prev + 1);
            }
            last_seq = Some(seq);
            if e["kind"] == "gift" {
                seen.push(e["gift_id"].clone());
            }
        }
        assert_eq!(seen, gift_ids);
    }
}
