//! The floor's writers: connections split into one shard per core, each shard one task that owns
//! its connections' sockets and writes every frame to them itself.
//!
//! This is the cheapest delivery found for a room event on this machine: no task per viewer to
//! wake, no per-viewer queue, no framing per viewer. A room's event is one ready WebSocket frame
//! (server frames are unmasked, so the bytes are the same for everyone); the shard takes every
//! message waiting in its queue at once (a round), joins each room's events of the round into one
//! buffer, and writes that buffer to each member's socket with one non-blocking `write`. A socket that
//! cannot take it all keeps the rest in its own buffer, flushed when the socket is writable, and
//! is closed as slow past [`PENDING_BYTES_MAX`].

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Messages a shard's queue holds; a publisher waits while its shard's queue is full.
pub(crate) const SHARD_QUEUE_MSGS: usize = 65_536;
/// Messages a shard takes off its queue per round (and so the most events joined in one write).
const ROUND_MSGS_MAX: usize = 1_024;
/// Bytes a connection may have waiting for its socket before it is closed as slow: about as many
/// gift events as giftd's ring holds (1,024 of ~300 bytes).
pub(crate) const PENDING_BYTES_MAX: usize = 320 * 1024;

pub(crate) enum ShardMsg {
    Attach {
        conn: u64,
        stream: Arc<TcpStream>,
    },
    Join {
        conn: u64,
        room: u64,
    },
    Detach {
        conn: u64,
    },
    /// A frame for one connection (a welcome, an ack, an error).
    Direct {
        conn: u64,
        frame: Bytes,
    },
    /// A room event's frame, for every member of `room` in this shard.
    Event {
        room: u64,
        frame: Bytes,
    },
}

/// The queues of every shard; connection `n` belongs to shard `n % shards`.
pub(crate) struct Shards {
    queues: Vec<mpsc::Sender<ShardMsg>>,
}

impl Shards {
    pub(crate) fn start(count: usize) -> Shards {
        let queues = (0..count.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(SHARD_QUEUE_MSGS);
                tokio::spawn(run(rx));
                tx
            })
            .collect();
        Shards { queues }
    }

    pub(crate) fn of(&self, conn: u64) -> &mpsc::Sender<ShardMsg> {
        &self.queues[(conn % self.queues.len() as u64) as usize]
    }

    pub(crate) fn all(&self) -> &[mpsc::Sender<ShardMsg>] {
        &self.queues
    }
}

struct Conn {
    stream: Arc<TcpStream>,
    /// Bytes the socket has not taken yet, in order; empty (and unallocated) almost always.
    pending: BytesMut,
    /// Whether a writable future is armed for this connection.
    waiting: bool,
    room: Option<u64>,
    /// How many of its room's undelivered frames ([`Room::frames`]) this connection has got.
    sent: usize,
}

/// A room's members in this shard and the events not yet written to all of them.
#[derive(Default)]
struct Room {
    members: Vec<u64>,
    frames: Vec<Bytes>,
    /// `frames[from..]` joined, for the `from` most members need: (from, frames then, bytes).
    joined: Option<(usize, usize, Bytes)>,
}

impl Room {
    /// The frames from `from` on, as one buffer (no copy when it is a single frame).
    fn tail(&mut self, from: usize) -> Bytes {
        if let Some((f, n, b)) = &self.joined {
            if *f == from && *n == self.frames.len() {
                return b.clone();
            }
        }
        let bytes = match &self.frames[from..] {
            [one] => one.clone(),
            rest => Bytes::from(rest.concat()),
        };
        self.joined = Some((from, self.frames.len(), bytes.clone()));
        bytes
    }
}

type Writable = FuturesUnordered<Pin<Box<dyn Future<Output = u64> + Send>>>;

#[derive(Default)]
struct Shard {
    conns: HashMap<u64, Conn>,
    rooms: HashMap<u64, Room>,
    /// Rooms with frames some member has not got.
    dirty: Vec<u64>,
    /// One future per connection with pending bytes: its socket's next writable moment.
    writable: Writable,
}

/// Members written to between two looks at the queue during a sweep.
const SWEEP_STEP_MEMBERS: usize = 64;

async fn run(mut rx: mpsc::Receiver<ShardMsg>) {
    let mut shard = Shard::default();
    let mut round = Vec::with_capacity(ROUND_MSGS_MAX);
    loop {
        if shard.dirty.is_empty() {
            tokio::select! {
                biased;
                Some(conn) = shard.writable.next(), if !shard.writable.is_empty() => shard.flush(conn),
                n = rx.recv_many(&mut round, ROUND_MSGS_MAX) => {
                    if n == 0 {
                        return;
                    }
                    shard.apply(&mut round);
                }
            }
            continue;
        }
        while let Some(Some(conn)) = shard.writable.next().now_or_never() {
            shard.flush(conn);
        }
        for room in std::mem::take(&mut shard.dirty) {
            shard.sweep(room, &mut rx, &mut round);
        }
        // Let the readers (commands, joins) run between sweeps.
        tokio::task::yield_now().await;
    }
}

impl Shard {
    fn apply(&mut self, round: &mut Vec<ShardMsg>) {
        for msg in round.drain(..) {
            match msg {
                ShardMsg::Event { room, frame } => {
                    let r = self.rooms.entry(room).or_default();
                    if r.frames.is_empty() {
                        self.dirty.push(room);
                    }
                    r.frames.push(frame);
                }
                ShardMsg::Attach { conn, stream } => {
                    let c = Conn {
                        stream,
                        pending: BytesMut::new(),
                        waiting: false,
                        room: None,
                        sent: 0,
                    };
                    self.conns.insert(conn, c);
                }
                ShardMsg::Join { conn, room } => {
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    let r = self.rooms.entry(room).or_default();
                    // The room's undelivered frames predate the member's snapshot.
                    c.room = Some(room);
                    c.sent = r.frames.len();
                    r.members.push(conn);
                }
                ShardMsg::Detach { conn } => self.remove(conn),
                ShardMsg::Direct { conn, frame } => {
                    // The connection first gets its room's events queued before this reply.
                    if self.catch_up(conn) {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            if !write_to(conn, c, &frame, &mut self.writable) {
                                self.remove(conn);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes `conn` every frame of its room it has not got; false if it had to go.
    fn catch_up(&mut self, conn: u64) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(r) = c.room.and_then(|r| self.rooms.get_mut(&r)) else {
            return true;
        };
        if c.sent >= r.frames.len() {
            return true;
        }
        let bytes = r.tail(c.sent);
        c.sent = r.frames.len();
        if write_to(conn, c, &bytes, &mut self.writable) {
            return true;
        }
        self.remove(conn);
        false
    }

    /// One pass over a room's members: each gets, in one write, every frame it has not got.
    /// Every [`SWEEP_STEP_MEMBERS`] members the sweep takes what has arrived in the queue, so
    /// under load the members still ahead get the new events in the same write (more frames per
    /// write the busier the room), and no frame waits for anything but the sweep reaching its
    /// socket. A room whose frames grew during the pass stays dirty for another pass.
    fn sweep(&mut self, room: u64, rx: &mut mpsc::Receiver<ShardMsg>, round: &mut Vec<ShardMsg>) {
        let mut i = 0;
        loop {
            if i % SWEEP_STEP_MEMBERS == 0 {
                while round.len() < ROUND_MSGS_MAX {
                    match rx.try_recv() {
                        Ok(msg) => round.push(msg),
                        Err(_) => break,
                    }
                }
                self.apply(round);
            }
            let Some(r) = self.rooms.get_mut(&room) else {
                return;
            };
            let Some(&conn) = r.members.get(i) else {
                break;
            };
            i += 1;
            self.catch_up(conn);
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let n = r.frames.len();
        let behind = r
            .members
            .iter()
            .any(|m| self.conns.get(m).is_some_and(|c| c.sent < n));
        if behind {
            if !self.dirty.contains(&room) {
                self.dirty.push(room);
            }
            return;
        }
        // Everyone has every frame: start the room's next round from empty.
        r.frames.clear();
        r.joined = None;
        for m in &r.members {
            if let Some(c) = self.conns.get_mut(m) {
                c.sent = 0;
            }
        }
        self.dirty.retain(|d| *d != room);
    }

    /// The socket of `conn` became writable: send what it has pending.
    fn flush(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.waiting = false;
        if !write_to(conn, c, &[], &mut self.writable) {
            self.remove(conn);
        }
    }

    fn remove(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        // Ends the reader too (its next read sees the end), and wakes an armed writable future.
        let _ = socket2::SockRef::from(&*c.stream).shutdown(Shutdown::Both);
        if let Some(r) = c.room.and_then(|r| self.rooms.get_mut(&r)) {
            if let Some(i) = r.members.iter().position(|m| *m == conn) {
                r.members.swap_remove(i);
            }
        }
    }
}

/// Writes `bytes` after whatever `c` has pending, without waiting: what the socket does not take
/// stays pending and a writable future is armed for it. False when the connection must go (its
/// socket failed, or it is slow: more than [`PENDING_BYTES_MAX`] waiting).
fn write_to(id: u64, c: &mut Conn, bytes: &[u8], writable: &mut Writable) -> bool {
    if c.pending.is_empty() {
        if bytes.is_empty() {
            return true;
        }
        match c.stream.try_write(bytes) {
            Ok(n) if n == bytes.len() => return true,
            Ok(n) => c.pending.extend_from_slice(&bytes[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => c.pending.extend_from_slice(bytes),
            Err(_) => return false,
        }
    } else {
        c.pending.extend_from_slice(bytes);
        if c.pending.len() > PENDING_BYTES_MAX {
            return false;
        }
        if c.waiting {
            return true;
        }
        match c.stream.try_write(&c.pending) {
            Ok(n) => c.pending.advance(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        if c.pending.is_empty() {
            // Give the buffer back: a connection that caught up holds nothing.
            c.pending = BytesMut::new();
            return true;
        }
    }
    c.waiting = true;
    let stream = c.stream.clone();
    writable.push(Box::pin(async move {
        // An error (the socket closed) also ends the wait; the next write finds out.
        let _ = stream.writable().await;
        id
    }));
    true
}
