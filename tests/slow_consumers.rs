//! Slow consumers, seen byte by byte: what one viewer that stops reading can hold, and what it
//! sees when it is dropped (docs/PROTOCOL.md §9).
//!
//! Each test connects a raw WebSocket client with a small receive buffer, lets it join a room,
//! stops reading, and floods the room until giftd drops it, while the streamer and a witness
//! viewer read at their own pace and must see every event, in order. Then the stalled client
//! reads what the server sent it.

mod support;

use std::time::Duration;

use giftd::auth::Role;
use serde_json::json;
use support::raw_ws::{RawFrame, RawWs, StreamEnd};
use support::{Client, TestServer};

/// The client's socket receive buffer (Linux doubles it).
const RECV_BUFFER_BYTES: u32 = 4096;
/// The server's per-socket send buffer in these tests (Linux doubles it).
const SEND_BUFFER_BYTES: usize = 16 * 1024;

async fn server(close_timeout_ms: u64) -> TestServer {
    TestServer::start_with(|c| {
        c.server.socket_send_buffer_bytes = SEND_BUFFER_BYTES;
        c.server.write_timeout_ms = 300;
        c.server.close_timeout_ms = close_timeout_ms;
    })
    .await
}

/// A raw viewer in room `r`, which then stops reading.
async fn stalled_viewer(server: &TestServer) -> RawWs {
    let token = server.token("sloth", Role::Viewer);
    let mut raw = RawWs::connect(server.addr, &token, RECV_BUFFER_BYTES).await;
    raw.send_text(r#"{"type":"join","id":1,"room":"r"}"#).await;
    raw
}

/// Reads every event of the room from its join to the question "done", checking `seq` is gap-free,
/// and returns how many questions it saw.
fn witness(mut client: Client, first_seq: u64) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut last = first_seq;
        let mut questions = 0;
        // Bounded by the flood: at most 20,001 questions and their viewer counts.
        for _ in 0..100_000 {
            let e = client.next_event().await;
            let seq = e["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "a gap or reorder");
            last = seq;
            if e["kind"] == "question" {
                questions += 1;
                if e["text"] == "done" {
                    return questions;
                }
            }
        }
        panic!("no end to the flood");
    })
}

/// Floods room `r` with questions until giftd has dropped one slow consumer, then asks "done".
/// Bounded: at most 20,000 questions of 300 characters. Returns the number of questions.
async fn flood_until_dropped(server: &TestServer, flooder: &mut Client) -> u64 {
    let asked = flood(server, flooder).await;
    flooder.ok(json!({ "type": "ask", "text": "done" })).await;
    asked + 1
}

async fn flood(server: &TestServer, flooder: &mut Client) -> u64 {
    let text = "q".repeat(299);
    for batch in 0..5_000u64 {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(flooder.send(json!({ "type": "ask", "text": text })).await);
        }
        for id in ids {
            flooder.reply(id).await.expect("the question is accepted");
        }
        while !flooder.backlog().is_empty() {
            flooder.next_message().await;
        }
        if batch % 10 == 9 && server.metric("giftd_slow_consumers_total").await >= 1.0 {
            return (batch + 1) * 4;
        }
    }
    panic!("the stalled viewer was never dropped");
}

/// A room `r` whose streamer and one viewer read everything (the witnesses), and a flooder.
async fn room_with_flooder(server: &TestServer) -> (Vec<tokio::task::JoinHandle<u64>>, Client) {
    let mut star = server.streamer("star").await;
    let first = star.open_room("r", "flood").await["seq"].as_u64().unwrap();
    let mut witnesses = vec![witness(star, first)];
    let mut viewer = server.viewer("witness").await;
    let first = viewer.join("r").await["seq"].as_u64().unwrap();
    witnesses.push(witness(viewer, first));
    let mut flooder = server.viewer("flooder").await;
    flooder.join("r").await;
    (witnesses, flooder)
}

/// Every witness saw every question, and only the stalled viewer was dropped.
async fn assert_only_the_stalled_viewer_was_dropped(
    server: &TestServer,
    witnesses: Vec<tokio::task::JoinHandle<u64>>,
    asked: u64,
) {
    for w in witnesses {
        assert_eq!(w.await.unwrap(), asked, "a witness missed questions");
    }
    assert_eq!(server.metric("giftd_slow_consumers_total").await, 1.0);
}

/// Everything a stuck viewer can have been sent: the kernel's buffers on both ends (Linux doubles
/// each requested size), giftd's WebSocket write buffer, and one frame in progress, with slack
/// for TCP segment overheads. Without a bounded send buffer this was about 2.2 MB.
fn bytes_bound(server: &TestServer) -> usize {
    2 * SEND_BUFFER_BYTES
        + 2 * RECV_BUFFER_BYTES as usize
        + server.config.server.ws_write_buffer_bytes
        + 2 * 1024
        + 32 * 1024
}

#[tokio::test]
async fn a_viewer_that_stops_reading_holds_a_bounded_amount_and_then_reads_close_4000() {
    let server = server(10_000).await;
    let (witnesses, mut flooder) = room_with_flooder(&server).await;
    let mut sloth = stalled_viewer(&server).await;
    let asked = flood_until_dropped(&server, &mut flooder).await;
    assert_only_the_stalled_viewer_was_dropped(&server, witnesses, asked).await;

    // It reads again, within close_timeout_ms: whole frames, then the close frame, then the end.
    let (frames, end) = sloth.read_to_end(Duration::from_secs(10)).await;
    assert_eq!(
        end,
        StreamEnd::Eof { mid_frame: false },
        "{:?}",
        frames.last()
    );
    assert_eq!(
        frames.last(),
        Some(&RawFrame::Close(4000, "slow".into())),
        "the last frame is close 4000"
    );
    let texts = frames
        .iter()
        .filter(|f| matches!(f, RawFrame::Text(_)))
        .count();
    assert!(
        (texts as u64) < asked,
        "it was dropped before it got the whole flood"
    );
    assert!(
        sloth.bytes_received <= bytes_bound(&server),
        "a stuck viewer was sent {} bytes, more than the bound {}",
        sloth.bytes_received,
        bytes_bound(&server)
    );
    assert_eq!(server.metric("giftd_close_resets_total").await, 0.0);
    assert_eq!(
        server
            .metric(r#"giftd_connections_closed_total{reason="slow"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_viewer_that_never_reads_again_is_reset_never_cut_inside_a_frame() {
    let server = server(300).await;
    let (witnesses, mut flooder) = room_with_flooder(&server).await;
    let mut sloth = stalled_viewer(&server).await;
    let asked = flood_until_dropped(&server, &mut flooder).await;
    assert_only_the_stalled_viewer_was_dropped(&server, witnesses, asked).await;

    // It does not read even its close frame within close_timeout_ms, so the socket is reset.
    let mut resets = 0.0;
    for _ in 0..200 {
        resets = server.metric("giftd_close_resets_total").await;
        if resets >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(resets, 1.0, "the stalled socket was reset");

    let (frames, end) = sloth.read_to_end(Duration::from_secs(10)).await;
    // What it reads is whole frames; the stream never ends cleanly in the middle of one.
    match end {
        StreamEnd::Error(kind) => assert_eq!(kind, std::io::ErrorKind::ConnectionReset),
        StreamEnd::Eof { mid_frame } => {
            assert!(!mid_frame, "a clean end of stream inside a frame");
            assert!(matches!(frames.last(), Some(RawFrame::Close(4000, _))));
        }
    }
    assert!(sloth.bytes_received <= bytes_bound(&server));
}

/// When most of a room's members fall behind together (here: eight viewers whose reads stall,
/// standing in for a node too slow to write to them), the room refuses new commands with
/// `room_busy` before any of them is a whole ring behind: no member is dropped as slow, and the
/// room takes commands again once they have caught up (docs/PROTOCOL.md §9).
#[tokio::test]
async fn members_behind_together_make_the_room_busy_instead_of_being_dropped() {
    let server = TestServer::start_with(|c| {
        c.server.socket_send_buffer_bytes = SEND_BUFFER_BYTES;
        // Stalled writers are not dropped for their time: only the ring could drop them.
        c.server.write_timeout_ms = 60_000;
        c.rooms.room_ring_frames = 128;
        c.rooms.busy_backlog_events = 70;
        c.rooms.viewer_count_interval_ms = 60_000;
    })
    .await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "busy").await;
    let mut behind = Vec::new();
    for i in 0..8 {
        let token = server.token(&format!("v{i}"), Role::Viewer);
        let mut raw = RawWs::connect(server.addr, &token, RECV_BUFFER_BYTES).await;
        raw.send_text(r#"{"type":"join","id":1,"room":"r"}"#).await;
        behind.push(raw);
    }
    let mut talker = server.viewer("talker").await;
    talker.join("r").await;

    let text = "q".repeat(299);
    let (mut asked, mut last_seq) = (0u64, 0u64);
    let busy = loop {
        assert!(asked < 2_000, "the room never got busy");
        match talker.request(json!({ "type": "ask", "text": text })).await {
            Ok(r) => {
                asked += 1;
                last_seq = r["seq"].as_u64().unwrap();
            }
            Err(e) => break e,
        }
    };
    assert!(asked > 70, "busy only once members were behind: {asked}");
    assert_eq!(busy["reason"], "room_busy", "{busy}");
    assert_eq!(busy["code"], 15006);
    assert_eq!(server.metric("giftd_slow_consumers_total").await, 0.0);

    // They catch up: every question arrives, no close frame, and the room takes commands again.
    for raw in &mut behind {
        let frames = raw
            .read_until(
                |f| matches!(f, RawFrame::Text(t) if event_seq(t) == Some(last_seq)),
                Duration::from_secs(10),
            )
            .await;
        assert!(
            frames.iter().all(|f| !matches!(f, RawFrame::Close(..))),
            "{frames:?}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match talker
            .request(json!({ "type": "ask", "text": "again" }))
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e["reason"], "room_busy", "{e}");
                assert!(std::time::Instant::now() < deadline, "still busy");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert_eq!(server.metric("giftd_slow_consumers_total").await, 0.0);
    assert!(server.metric("giftd_room_busy_total").await >= 1.0);
    drop(star);
}

/// The `seq` of a room event.
fn event_seq(frame: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(frame).ok()?;
    (v["type"] == "event").then(|| v["seq"].as_u64()).flatten()
}
