//! Hostile clients against a real giftd (tests/support spawns it on 127.0.0.1:0).
//!
//! Every test plays one kind of abuse and checks three things: the abuser is rejected or bounded
//! with the documented error and close code; no money moves (balances through the admin API
//! before and after); and the honest members of the same room keep receiving their events, in
//! order. Loops are bounded in count and time; nothing asserts on speed.
//!
//! The plain `#[test]`s at the end are regression tests for inputs found by fuzzing
//! (`fuzz/`, see docs/RELIABILITY.md).

#[rustfmt::skip]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use giftd::auth::{Authenticator, Role};
use giftd::config::{AuthConfig, Rate};
use serde_json::{json, Value};
use support::rooms::LiveRoom;
use support::tokens::{hs256, jwt, now_secs};
use support::{TestServer, ADMIN_TOKEN, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// Helpers local to this file.

/// Wallet balance and streamer earnings of the users a test cares about.
async fn money(server: &TestServer, users: &[&str]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for u in users {
        let w = server.wallet(u).await;
        out.push((
            w["balance_coins"].as_u64().unwrap(),
            w["earnings_coins"].as_u64().unwrap(),
        ));
    }
    out
}

/// Number of gifts committed in the ledger, read from the SQLite file read-only.
fn ledger_gifts(server: &TestServer, sender: &str) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(
        server.db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM gifts WHERE sender = ?1",
        [sender],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// A masked client frame, written by hand.
fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Sends an upgrade request by hand. Returns the status, the head and (for non-101 answers) the
/// body, plus the stream for a 101.
async fn upgrade(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[head_end..].to_vec();
    if status != 101 {
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while body.len() < len {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("a body in time")
                .unwrap();
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&buf[..n]);
        }
    }
    (
        status,
        head,
        String::from_utf8_lossy(&body).to_string(),
        stream,
    )
}

/// Reads server frames from a raw stream until the server closes (EOF, reset or a close frame
/// followed by EOF), or `WAIT` passes. Returns `(opcode, payload)` pairs and whether the
/// connection ended.
async fn read_server_frames(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    let ended = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let mut frames = Vec::new();
    let mut at = 0;
    while raw.len() >= at + 2 {
        let opcode = raw[at] & 0x0f;
        let mut len = (raw[at + 1] & 0x7f) as usize;
        let mut head = 2;
        if len == 126 {
            if raw.len() < at + 4 {
                break;
            }
            len = u16::from_be_bytes([raw[at + 2], raw[at + 3]]) as usize;
            head = 4;
        } else if len == 127 {
            if raw.len() < at + 10 {
                break;
            }
            len = u64::from_be_bytes(raw[at + 2..at + 10].try_into().unwrap()) as usize;
            head = 10;
        }
        if raw.len() < at + head + len {
            break;
        }
        frames.push((opcode, raw[at + head..at + head + len].to_vec()));
        at += head + len;
    }
    (frames, ended)
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames.iter().find(|(op, _)| *op == 0x8).map(|(_, p)| {
        if p.len() >= 2 {
            u16::from_be_bytes([p[0], p[1]])
        } else {
            1005
        }
    })
}

fn text_frames(frames: &[(u8, Vec<u8>)]) -> Vec<Value> {
    frames
        .iter()
        .filter(|(op, _)| *op == 0x1)
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Oversized and fragmented messages.

#[tokio::test]
async fn oversized_frames_and_messages_get_message_too_large_then_1009() {
    // A configured limit, not the default, must be the one enforced.
    let server = TestServer::start_with(|c| c.server.message_bytes_max = 1024).await;
    let mut room = LiveRoom::open(&server, "r").await;
    server.top_up("mallory", "web", 1_000, "m-1").await;
    let before = money(&server, &["mallory", "star"]).await;
    let limit = server.config.server.message_bytes_max;

    // One frame over the limit, carrying an otherwise valid gift.
    let mut big = server.viewer("mallory").await;
    big.join("r").await;
    let pad = "x".repeat(limit + 1024);
    big.send_text(
        &json!({ "type": "send_gift", "id": 1, "sticker": "rose", "key": "k", "pad": pad })
            .to_string(),
    )
    .await;
    let closed = big.closed().await;
    assert_eq!(closed.code, 1009, "{closed:?}");
    let err = big
        .backlog()
        .iter()
        .find(|v| v["type"] == "error")
        .expect("an error before the close");
    assert_eq!(err["reason"], "message_too_large");
    assert_eq!(err["code"], 11007);

    // A message over the limit made of frames that are each under it.
    let mut frag = server.viewer("mallory").await;
    frag.join("r").await;
    let chunk = vec![b' '; limit / 2];
    frag.send_raw(Message::Frame(Frame::message(
        chunk.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    for _ in 0..2 {
        frag.send_raw(Message::Frame(Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .await;
    }
    let closed = frag.closed().await;
    assert_eq!(closed.code, 1009, "{closed:?}");
    assert!(frag
        .backlog()
        .iter()
        .any(|v| v["reason"] == "message_too_large"));

    assert_eq!(money(&server, &["mallory", "star"]).await, before);
    assert_eq!(ledger_gifts(&server, "mallory"), 0);
    room.assert_alive().await;
}

#[tokio::test]
async fn flood_of_tiny_continuation_frames_is_bounded_by_message_size() {
    let server = TestServer::start().await;
    let mut room = LiveRoom::open(&server, "r").await;
    let limit = server.config.server.message_bytes_max;
    let token = server.token("mallory", Role::Viewer);
    let (status, _, _, stream) = upgrade(server.addr, &format!("/ws?token={token}"), &[]).await;
    assert_eq!(status, 101);
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move { read_server_frames(&mut rd).await });

    // A text message opened and then continued one byte at a time, far past the limit. Written
    // in batches; the server may cut the connection before all of it is written.
    let frames = limit + 4096;
    wr.write_all(&masked_frame(0x1, false, b"{")).await.unwrap();
    let one = masked_frame(0x0, false, b" ");
    let mut wire = Vec::new();
    let mut written = 0;
    while written < frames {
        let n = 1024.min(frames - written);
        wire.clear();
        for _ in 0..n {
            wire.extend_from_slice(&one);
        }
        written += n;
        if wr.write_all(&wire).await.is_err() {
            break;
        }
    }
    let (frames_seen, ended) = reader.await.unwrap();
    assert!(ended, "the server must close the connection");
    if let Some(code) = close_code(&frames_seen) {
        assert_eq!(code, 1009, "{frames_seen:?}");
        assert!(text_frames(&frames_seen)
            .iter()
            .any(|v| v["reason"] == "message_too_large"));
    }
    // Whatever the client managed to read before the reset, the server says why it closed.
    let too_big = server
        .metric(r#"giftd_connections_closed_total{reason="too_big"}"#)
        .await;
    assert_eq!(too_big, 1.0);
    room.assert_alive().await;
}

#[tokio::test]
async fn continuation_without_a_start_is_a_protocol_violation() {
    let server = TestServer::start().await;
    let token = server.token("mallory", Role::Viewer);
    let (status, _, _, stream) = upgrade(server.addr, &format!("/ws?token={token}"), &[]).await;
    assert_eq!(status, 101);
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&masked_frame(0x0, true, b"{}")).await.unwrap();
    let (frames, ended) = read_server_frames(&mut rd).await;
    assert!(ended);
    assert_eq!(close_code(&frames), Some(1008), "{frames:?}");
}

// ---------------------------------------------------------------------------------------------
// Slow handshakes and silent connections.

#[tokio::test]
async fn slowloris_handshakes_are_cut_by_the_handshake_timeout() {
    let server = TestServer::start_with(|c| c.server.handshake_timeout_ms = 300).await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for i in 0..48 {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = stream.into_split();
            // A third of them send nothing at all; the others drip a handshake that never ends.
            let drip = i % 3 != 0;
            if drip {
                let _ = wr
                    .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n")
                    .await;
            }
            let mut buf = [0u8; 512];
            // At most 200 drips of 50 ms: 10 s, far above the 300 ms timeout.
            for tick in 0..200u32 {
                tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Some(tick),
                        Ok(_) => {} // A 408 or similar before the close is fine.
                    },
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if drip && wr.write_all(b"x").await.is_err() {
                            return Some(tick);
                        }
                    }
                }
            }
            None
        }));
    }
    let mut survivors = 0;
    for t in tasks {
        if t.await.unwrap().is_none() {
            survivors += 1;
        }
    }
    assert_eq!(
        survivors, 0,
        "connections still open 10 s after a 300 ms handshake timeout"
    );
    // Honest clients still get in.
    let mut ok = server.viewer("alice").await;
    ok.ok(json!({ "type": "ping" })).await;
}

// ---------------------------------------------------------------------------------------------
// Frame types and encodings.

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_1007() {
    let server = TestServer::start().await;
    let mut room = LiveRoom::open(&server, "r").await;
    let mut bad = server.viewer("mallory").await;
    bad.send_raw(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    assert_eq!(bad.closed().await.code, 1007);

    // Invalid UTF-8 split across fragments (a sequence cut and never completed).
    let mut bad = server.viewer("mallory").await;
    bad.send_raw(Message::Frame(Frame::message(
        "{\"type\":\"ping\",\"id\":1,\"x\":\"".as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    bad.send_raw(Message::Frame(Frame::message(
        vec![0xe2, 0x82],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await;
    bad.send_raw(Message::Frame(Frame::message(
        b"\"}".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    assert_eq!(bad.closed().await.code, 1007);
    room.assert_alive().await;
}

#[tokio::test]
async fn binary_frames_get_an_error_and_the_connection_survives() {
    let server = TestServer::start().await;
    let mut c = server.viewer("alice").await;
    for _ in 0..3 {
        c.send_raw(Message::binary(br#"{"type":"ping","id":1}"#.to_vec()))
            .await;
        let err = c.next_of("error").await;
        assert_eq!(err["reason"], "binary_frame");
        assert_eq!(err["code"], 11004);
    }
    c.ok(json!({ "type": "ping" })).await;
}

#[tokio::test]
async fn repeated_protocol_errors_close_4503() {
    // A configured limit, not the default, must be the one enforced.
    let server = TestServer::start_with(|c| c.server.protocol_errors_max = 5).await;
    let mut room = LiveRoom::open(&server, "r").await;
    let max = server.config.server.protocol_errors_max;
    let mut c = server.viewer("mallory").await;
    for _ in 0..=max {
        c.send_text("{nope").await;
    }
    let closed = c.closed().await;
    assert_eq!(closed.code, 4503, "{closed:?}");
    let errors = c
        .backlog()
        .iter()
        .filter(|v| v["reason"] == "bad_json")
        .count();
    assert_eq!(errors as u32, max + 1);
    room.assert_alive().await;
}

#[tokio::test]
async fn client_close_handshake_is_answered() {
    let server = TestServer::start().await;
    let mut c = server.viewer("alice").await;
    c.send_raw(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        },
    )))
    .await;
    // RFC 6455 5.5.1: the endpoint that receives a close frame sends one back before closing.
    let closed = c.closed().await;
    assert_eq!(closed.code, 1000, "{closed:?}");
}

#[tokio::test]
async fn a_ping_is_answered_with_its_payload_in_turn_with_the_replies() {
    use futures_util::{SinkExt, StreamExt};
    let server = TestServer::start().await;
    let mut ws = server.viewer("alice").await.into_inner();
    ws.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .unwrap();
    ws.send(Message::Ping(b"are you there"[..].into()))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"ping","id":2}"#))
        .await
        .unwrap();
    // The pong comes between the two acks, as the client sent them, each frame whole.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection stays open")
            .unwrap();
        match msg {
            Message::Pong(payload) => {
                seen.push(format!("pong {}", String::from_utf8_lossy(&payload)))
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "ack" {
                    seen.push(format!("ack {}", v["id"]));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ack 1", "pong are you there", "ack 2"]);
}

// ---------------------------------------------------------------------------------------------
// Roles and ownership.

#[tokio::test]
async fn viewers_and_other_streamers_cannot_act_as_the_room_owner() {
    let server = TestServer::start().await;
    let mut room = LiveRoom::open(&server, "r").await;
    server.top_up("talker", "web", 100, "t-1").await;
    let receipt = room.talker.send_gift("rose", "t-g1").await.unwrap();
    let gift_id = receipt["gift_id"].as_str().unwrap().to_owned();
    let asked = room
        .talker
        .ok(json!({ "type": "ask", "text": "a question" }))
        .await;
    let qid = asked["question_id"].as_u64().unwrap();
    room.assert_alive().await;

    let owner_only = [
        json!({ "type": "answer", "question_id": qid, "text": "hijacked" }),
        json!({ "type": "thank", "gift_id": gift_id, "text": "hijacked" }),
        json!({ "type": "close_room" }),
    ];
    let mut viewer = server.viewer("mallory").await;
    viewer.join("r").await;
    for cmd in &owner_only {
        let err = viewer.request(cmd.clone()).await.unwrap_err();
        assert_eq!(err["reason"], "wrong_role", "{cmd}: {err}");
        assert_eq!(err["code"], 12003);
    }
    let err = viewer
        .request(json!({ "type": "open_room", "room": "mine", "title": "t" }))
        .await
        .unwrap_err();
    assert_eq!(err["reason"], "wrong_role");

    // Another streamer in the room (as a member) is not its owner.
    let mut eve = server.streamer("eve").await;
    eve.join("r").await;
    for cmd in &owner_only {
        let err = eve.request(cmd.clone()).await.unwrap_err();
        assert_eq!(err["reason"], "not_room_owner", "{cmd}: {err}");
        assert_eq!(err["code"], 12004);
    }
    let mut eve2 = server.streamer("eve").await;
    let err = eve2
        .request(json!({ "type": "open_room", "room": "r", "title": "taken" }))
        .await
        .unwrap_err();
    assert_eq!(err["reason"], "room_exists");

    // Nothing the intruders did reached the room; the owner still can. (The room's own beats,
    // viewer counts and the leaderboards the gift above changed, may fall in this window.)
    let seen = room.assert_alive().await;
    assert!(
        seen.iter()
            .all(|e| e["kind"] == "viewers" || e["kind"] == "leaderboard"),
        "{seen:?}"
    );
    room.star
        .ok(json!({ "type": "answer", "question_id": qid, "text": "mine" }))
        .await;
    let (_, rooms) = server.http("GET", "/rooms", None, None).await;
    assert!(rooms.contains("\"r\""), "{rooms}");
}

#[tokio::test]
async fn a_gift_debits_only_the_token_subject() {
    let server = TestServer::start().await;
    let mut room = LiveRoom::open(&server, "r").await;
    server.top_up("bob", "ios", 1_000, "b-1").await;
    server.top_up("mallory", "web", 100, "m-1").await;

    // A token for bob forged with another secret gets nowhere.
    let forged = hs256("bob", "viewer", "giftd", b"mallorys-own-secret-0123456789");
    let (status, _, body, _) = upgrade(
        server.addr,
        "/ws",
        &[("authorization", &format!("Bearer {forged}"))],
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // With her own token, extra fields naming bob are refused, not ignored.
    let mut m = server.viewer("mallory").await;
    m.join("r").await;
    for extra in ["from", "user", "sender", "wallet", "sub"] {
        let mut cmd =
            json!({ "type": "send_gift", "sticker": "rose", "key": format!("x-{extra}") });
        cmd[extra] = json!("bob");
        let err = m.request(cmd).await.unwrap_err();
        assert_eq!(err["reason"], "invalid_message", "{extra}: {err}");
    }
    // A gift costs mallory, and only mallory.
    let receipt = m.send_gift("heart", "m-g1").await.unwrap();
    let conn = rusqlite::Connection::open_with_flags(
        server.db(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let sender: String = conn
        .query_row(
            "SELECT sender FROM gifts WHERE gift_id = ?1",
            [receipt["gift_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sender, "mallory");
    assert_eq!(server.balance("bob").await, 1_000);
    let price = receipt["price_coins"].as_u64().unwrap();
    assert_eq!(server.balance("mallory").await, 100 - price);
    // Mallory cannot read bob's wallet either: the wallet endpoint is admin-only.
    let (status, _) = server
        .http(
            "GET",
            "/admin/wallets/bob",
            Some(&server.token("mallory", Role::Viewer)),
            None,
        )
        .await;
    assert_eq!(status, 401);
    // ...nor top herself up.
    let body =
        json!({ "user": "mallory", "channel": "web", "coins": 1_000_000, "purchase_id": "free" });
    let (status, _) = server
        .http(
            "POST",
            "/admin/topup",
            Some(&server.token("mallory", Role::Viewer)),
            Some(&body),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(server.balance("mallory").await, 100 - price);
    // A replay of her key does not debit twice.
    let again = m.send_gift("heart", "m-g1").await.unwrap();
    assert_eq!(again["gift_id"], receipt["gift_id"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(server.balance("mallory").await, 100 - price);
    assert_eq!(ledger_gifts(&server, "mallory"), 1);
    assert_eq!(ledger_gifts(&server, "bob"), 0);
    room.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// Rate limits.

#[tokio::test]
async fn gifts_over_the_rate_limit_are_refused_before_any_debit() {
    // A 0.001/s refill adds no whole token within any test run: a connection gets 3 gifts, a
    // user 5 over all their connections.
    let server = TestServer::start_with(|c| {
        c.limits.connection.gifts = Rate {
            per_sec: 0.001,
            burst: 3,
        };
        c.limits.user.gifts = Rate {
            per_sec: 0.001,
            burst: 5,
        };
    })
    .await;
    let mut room = LiveRoom::open(&server, "r").await;
    server.top_up("mallory", "web", 10_000, "m-1").await;
    let mut m = server.viewer("mallory").await;
    m.join("r").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            m.send(
                json!({ "type": "send_gift", "sticker": "coffee", "key": format!("burst-{i}") }),
            )
            .await,
        );
    }
    let (mut ok, mut limited) = (0u64, 0u64);
    for id in ids {
        match m.reply(id).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e["reason"], "rate_limited", "{e}");
                assert_eq!(e["code"], 15001);
                limited += 1;
            }
        }
    }
    // The connection bucket refuses first; refusals spend nothing from the user bucket.
    assert_eq!((ok, limited), (3, 27));
    assert_eq!(server.balance("mallory").await, 10_000 - 3 * 100);
    assert_eq!(ledger_gifts(&server, "mallory"), 3);
    assert_eq!(server.metric("giftd_gifts_total").await, 3.0);
    // Other commands have their own bucket.
    m.ok(json!({ "type": "ping" })).await;
    // A second connection of the same user has a fresh connection bucket but shares the user
    // bucket: 2 more gifts, then refused.
    let mut m2 = server.viewer("mallory").await;
    m2.join("r").await;
    for i in 0..2 {
        m2.send_gift("coffee", &format!("burst-other-{i}"))
            .await
            .unwrap();
    }
    let err = m2.send_gift("coffee", "burst-other-2").await.unwrap_err();
    assert_eq!(err["reason"], "rate_limited");
    assert_eq!(err["code"], 15001);
    assert_eq!(server.balance("mallory").await, 10_000 - 5 * 100);
    assert_eq!(ledger_gifts(&server, "mallory"), 5);

    let seen = room.assert_alive().await;
    assert_eq!(seen.iter().filter(|e| e["kind"] == "gift").count(), 5);
}

// ---------------------------------------------------------------------------------------------
// Origins.

#[tokio::test]
async fn foreign_origin_is_refused_403() {
    let server =
        TestServer::start_with(|c| c.server.origins_allowed = vec!["https://app.example".into()])
            .await;
    let token = server.token("alice", Role::Viewer);
    let bearer = format!("Bearer {token}");
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
        "null",
    ] {
        let (status, head, body, _) = upgrade(
            server.addr,
            "/ws",
            &[("origin", origin), ("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, 403, "{origin}: {head}{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["reason"], "origin_not_allowed");
        assert_eq!(v["code"], 12006);
    }
    let (status, head, _, _) = upgrade(
        server.addr,
        "/ws",
        &[
            ("origin", "https://app.example"),
            ("authorization", &bearer),
        ],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        server
            .metric(r#"giftd_connections_rejected_total{reason="origin"}"#)
            .await,
        4.0
    );
    // The admin API stays closed to a browser page too: it needs the admin bearer token.
    let (status, _) = server.http("GET", "/admin/wallets/alice", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = server
        .http("GET", "/admin/wallets/alice", Some(ADMIN_TOKEN), None)
        .await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------------
// Regression tests for inputs found by fuzzing (fuzz/corpus, docs/RELIABILITY.md).

/// The decoder never panics and maps every bad frame to an 11xxx error.
#[test]
fn decode_survives_adversarial_frames() {
    let nested = "[".repeat(100_000);
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let inputs = [
        "",
        "\u{0}",
        "{\"type\":\"ping\",\"id\":18446744073709551616}",
        "{\"type\":\"ping\",\"id\":1e400}",
        "{\"type\":\"ping\",\"id\":1,\"id\":2}",
        "{\"id\":1,\"type\":\"\\ud800\"}",
        "{\"type\":\"answer\",\"id\":1,\"question_id\":-1,\"text\":\"x\"}",
        "{\"type\":\"ask\",\"id\":1,\"text\":\"x\",\"sticker\":null,\"key\":null}",
        nested.as_str(),
        deep_object.as_str(),
    ];
    for input in inputs {
        let (_, result) = giftd::protocol::decode(input);
        if let Err(e) = result {
            assert!((11000..12000).contains(&e.code()), "{e:?}");
        }
    }
}

/// Token verification never panics on structurally odd tokens.
#[test]
fn verify_survives_odd_tokens() {
    let auth = Authenticator::new(&AuthConfig::default());
    let secret = giftd::config::DEV_JWT_SECRET.as_bytes();
    let hs = json!({ "alg": "HS256" });
    let odd_claims = [
        json!({ "sub": "a", "role": "viewer", "aud": ["giftd", "x"], "exp": now_secs() + 60 }),
        json!({ "sub": "a", "role": "admin", "aud": "giftd", "exp": now_secs() + 60 }),
        json!({ "sub": "a", "role": "viewer", "aud": "giftd", "exp": u64::MAX }),
        json!({ "sub": "a", "role": "viewer", "aud": "giftd", "exp": -1 }),
        json!({ "sub": "a", "role": "viewer", "aud": "giftd", "exp": 1e300 }),
        json!({ "sub": "", "role": "viewer", "aud": "giftd", "exp": now_secs() + 60 }),
        json!({ "sub": "a", "role": "viewer", "aud": "giftd", "exp": now_secs() + 60, "room": 7 }),
    ];
    for c in &odd_claims {
        let _ = auth.verify(&jwt(&hs, c, secret));
    }
    for t in ["..", "a.b.c.d", ".e30.", "e30.e30.e30", "\u{feff}"] {
        assert!(auth.verify(t).is_err(), "{t}");
    }
}

/// Config parsing reports problems instead of panicking.
#[test]
fn config_survives_odd_files() {
    let inputs = [
        "[server]\nmessage_bytes_max = -1\n",
        "[server]\nlisten = \"[::1]:99999\"\n",
        "[limits.user]\ngifts = { per_sec = inf, burst = 1 }\n",
        "[limits.user]\ngifts = { per_sec = nan, burst = 1 }\n",
        "[split]\nstreamer_share_bps_default = 4294967296\n",
        "[[stickers]]\nid = \"\"\nname = \"\"\nprice_coins = 0\n",
        "[rooms]\npin_tiers = [{ price_coins_min = 18446744073709551615, pinned_secs = 18446744073709551615 }]\n",
        "stickers = 3\n",
        "[server]\nhandshake_timeout_ms = 18446744073709551615\nshutdown_grace_ms = 18446744073709551615\n",
    ];
    for input in inputs {
        let _ = giftd::config::Config::from_toml(input);
    }
}
