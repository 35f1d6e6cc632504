//! Rooms ready for a test: a streamer with one viewer, or a live room with honest members whose
//! events prove the room still works.

use serde_json::{json, Value};

use super::{Client, TestServer};

/// Streamer `star` opens room `r` and `viewer` joins it. Returns `(star, viewer)`.
pub async fn room_with_viewer(server: &TestServer, viewer: &str) -> (Client, Client) {
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut v = server.viewer(viewer).await;
    v.join("r").await;
    (star, v)
}

/// A live room with its streamer, a witness viewer that only listens, and a talker viewer whose
/// questions prove the room still works.
pub struct LiveRoom {
    pub star: Client,
    pub witness: Client,
    pub talker: Client,
    /// The last room sequence number the witness saw.
    pub last_seq: u64,
    probes: u32,
}

impl LiveRoom {
    /// Streamer `star` opens `room`; viewers `witness` and `talker` join it.
    pub async fn open(server: &TestServer, room: &str) -> LiveRoom {
        let mut star = server.streamer("star").await;
        star.open_room(room, "hostile test").await;
        let mut witness = server.viewer("witness").await;
        let snapshot = witness.join(room).await;
        let mut talker = server.viewer("talker").await;
        talker.join(room).await;
        LiveRoom {
            star,
            witness,
            talker,
            last_seq: snapshot["seq"].as_u64().unwrap(),
            probes: 0,
        }
    }

    /// The talker asks a question; the witness must receive it, every event on the way having a
    /// strictly increasing sequence number. Returns the events seen on the way.
    pub async fn assert_alive(&mut self) -> Vec<Value> {
        self.probes += 1;
        let text = format!("still live? #{}", self.probes);
        self.talker.ok(json!({ "type": "ask", "text": text })).await;
        let mut seen = Vec::new();
        for _ in 0..100_000 {
            let e = self.witness.next_event().await;
            let seq = e["seq"].as_u64().unwrap();
            assert!(
                seq > self.last_seq,
                "events out of order: {seq} after {}",
                self.last_seq
            );
            self.last_seq = seq;
            if e["kind"] == "question" && e["text"] == text.as_str() {
                return seen;
            }
            seen.push(e);
        }
        panic!("the witness never saw the probe question");
    }
}
