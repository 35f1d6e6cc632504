//! One viewer, sender or streamer connection on the floor: the upgrade, then a reader that takes
//! commands off the socket and answers through the connection's shard (so every frame to a socket
//! is written by one task, in order).
//!
//! The floor speaks the part of giftd's protocol that `giftd-load fanout` uses, with the same
//! messages and field order: `welcome`; `open_room`, `join`, `send_gift`, `close_room` and `ping`
//! answered by `ack`; a gift becomes a `gift` event in the room's `seq`. Tokens are not checked
//! and nothing is charged. Anything else gets an `error` with reason `unsupported`.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::frame::{self, ClientFrame, Refused};
use crate::http;
use crate::shard::{ShardMsg, Shards};

/// Rooms one floor holds at most (the generator's runs use up to a few hundred).
const ROOMS_MAX: usize = 10_000;
/// A room name longer than this is refused, as giftd does.
const ROOM_CHARS_MAX: usize = 64;

/// What every connection shares: the shards and the rooms.
pub(crate) struct Floor {
    shards: Shards,
    /// Room name to room. Locked only to find or create a room, never across an await.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    next_conn: AtomicU64,
    next_room: AtomicU64,
    /// Stands for giftd's room epoch, so events are the same size.
    epoch: String,
}

struct Room {
    key: u64,
    name: String,
    /// The room's last `seq`. Held while an event goes into every shard's queue, so that every
    /// shard sees the room's events in `seq` order and a join's snapshot `seq` is exact.
    seq: tokio::sync::Mutex<u64>,
}

impl Floor {
    pub(crate) fn new(shards: usize) -> Floor {
        Floor {
            shards: Shards::start(shards),
            rooms: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            next_room: AtomicU64::new(1),
            epoch: format!("{:016x}", now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    fn room(&self, name: &str, create: bool) -> Option<Arc<Room>> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rooms.get(name) {
            return Some(r.clone());
        }
        if !create || rooms.len() >= ROOMS_MAX {
            return None;
        }
        let room = Arc::new(Room {
            key: self.next_room.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            seq: tokio::sync::Mutex::new(0),
        });
        rooms.insert(name.to_owned(), room.clone());
        Some(room)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a str always serialises")
}

/// One connection, from the upgrade to its end.
pub(crate) async fn serve(floor: Arc<Floor>, mut stream: TcpStream) -> Result<()> {
    let buf = http::upgrade(&mut stream).await?;
    stream.set_nodelay(true)?;
    let stream = Arc::new(stream);
    let id = floor.next_conn.fetch_add(1, Ordering::Relaxed);
    let conn = Conn {
        id,
        shard: floor.shards.of(id).clone(),
        room: None,
    };
    conn.send(ShardMsg::Attach {
        conn: conn.id,
        stream: stream.clone(),
    })
    .await?;
    let welcome = format!(
        r#"{{"type":"welcome","user":"u{}","role":"viewer","server_time_ms":{}}}"#,
        conn.id,
        now_ms()
    );
    conn.direct(frame::text(&welcome)).await?;
    let shard = conn.shard.clone();
    let result = read_loop(&floor, conn, &stream, buf).await;
    let _ = shard.send(ShardMsg::Detach { conn: id }).await;
    result
}

struct Conn {
    id: u64,
    shard: mpsc::Sender<ShardMsg>,
    room: Option<Arc<Room>>,
}

impl Conn {
    async fn send(&self, msg: ShardMsg) -> Result<()> {
        self.shard.send(msg).await.context("shard stopped")
    }

    async fn direct(&self, frame: Bytes) -> Result<()> {
        self.send(ShardMsg::Direct {
            conn: self.id,
            frame,
        })
        .await
    }
}

async fn read_loop(
    floor: &Floor,
    mut conn: Conn,
    stream: &TcpStream,
    mut buf: BytesMut,
) -> Result<()> {
    loop {
        loop {
            match frame::read_client_frame(&mut buf) {
                Ok(None) => break,
                Ok(Some(ClientFrame::Text(text))) => command(floor, &mut conn, &text).await?,
                Ok(Some(ClientFrame::Ping(p))) => conn.direct(frame::pong(&p)).await?,
                Ok(Some(ClientFrame::Pong)) => {}
                Ok(Some(ClientFrame::Close)) => {
                    conn.direct(frame::close(1000)).await?;
                    return Ok(());
                }
                Err(Refused(code)) => {
                    conn.direct(frame::close(code)).await?;
                    bail!("refused a client frame ({code})");
                }
            }
        }
        stream.readable().await?;
        buf.reserve(4096);
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn ack(id: u64, result: &str) -> Bytes {
    frame::text(&format!(r#"{{"type":"ack","id":{id},"result":{result}}}"#))
}

fn error(id: u64, reason: &str, message: &str) -> Bytes {
    frame::text(&format!(
        r#"{{"type":"error","id":{id},"code":10000,"reason":"{reason}","message":{}}}"#,
        quoted(message)
    ))
}

async fn command(floor: &Floor, conn: &mut Conn, text: &str) -> Result<()> {
    let Ok(msg) = serde_json::from_str::<serde_json::Value>(text) else {
        return conn.direct(error(0, "invalid_message", "not JSON")).await;
    };
    let id = msg["id"].as_u64().unwrap_or(0);
    let room_name = msg["room"].as_str().unwrap_or_default();
    match msg["type"].as_str().unwrap_or_default() {
        kind @ ("open_room" | "join") => {
            if room_name.is_empty() || room_name.chars().count() > ROOM_CHARS_MAX {
                return conn.direct(error(id, "invalid_message", "bad room")).await;
            }
            let Some(room) = floor.room(room_name, kind == "open_room") else {
                return conn.direct(error(id, "room_not_found", room_name)).await;
            };
            join(conn, id, room).await
        }
        "send_gift" => {
            let Some(room) = conn.room.clone() else {
                return conn.direct(error(id, "not_in_room", "join first")).await;
            };
            let sticker = msg["sticker"].as_str().unwrap_or("rose");
            send_gift(floor, conn, id, &room, sticker).await
        }
        "close_room" | "ping" => conn.direct(ack(id, "{}")).await,
        _ => {
            let message = "the floor serves open_room, join, send_gift, close_room and ping";
            conn.direct(error(id, "unsupported", message)).await
        }
    }
}

async fn join(conn: &mut Conn, id: u64, room: Arc<Room>) -> Result<()> {
    if conn.room.is_some() {
        return conn
            .direct(error(id, "already_joined", "one room per connection"))
            .await;
    }
    let seq = room.seq.lock().await;
    conn.send(ShardMsg::Join {
        conn: conn.id,
        room: room.key,
    })
    .await?;
    conn.direct(ack(id, &format!(r#"{{"seq":{}}}"#, *seq)))
        .await?;
    drop(seq);
    conn.room = Some(room);
    Ok(())
}

/// Numbers the gift, puts its event into every shard (in `seq` order, under the room's lock),
/// then acknowledges it: the receipt never overtakes the event.
async fn send_gift(floor: &Floor, conn: &Conn, id: u64, room: &Room, sticker: &str) -> Result<()> {
    let mut seq = room.seq.lock().await;
    *seq += 1;
    let gift_id = format!("g{:012x}{:016x}", room.key, *seq);
    let sticker = quoted(sticker);
    let event = format!(
        r#"{{"type":"event","room":{},"epoch":"{}","seq":{},"kind":"gift","gift_id":"{gift_id}","from":"u{}","sticker":{sticker},"sticker_name":{sticker},"price_coins":1,"combo":{{"count":1,"total_coins":1}}}}"#,
        quoted(&room.name),
        floor.epoch,
        *seq,
        conn.id,
    );
    let frame = frame::text(&event);
    for shard in floor.shards.all() {
        shard
            .send(ShardMsg::Event {
                room: room.key,
                frame: frame.clone(),
            })
            .await
            .context("shard stopped")?;
    }
    let receipt = format!(
        r#"{{"gift_id":"{gift_id}","room":{},"seq":{},"replayed":false}}"#,
        quoted(&room.name),
        *seq
    );
    drop(seq);
    conn.direct(ack(id, &receipt)).await
}
