//! The active clients, run in the parent process: streamers (open a room, verify its event
//! sequence, optionally answer questions and thank gifts, close the room at the end) and senders
//! (join a room and send gifts, or a mix of commands, at a set pace with a bounded window of
//! commands in flight).
//!
//! Senders time each command from send to ack with the monotonic clock, and report every
//! committed gift (its id and wall-clock send time) on a channel, which the scenario forwards to
//! the workers so they can time each delivery.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use giftd::auth::Role;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, wall_us, Ws};
use crate::stats::{add_counts, Counts, Hist};
use crate::tokens::Minter;
use crate::wire;
use crate::worker::expect_reply;

/// Time allowed to connect, join or open a room.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A committed gift, as its sender saw it.
#[derive(Debug, Clone)]
pub(crate) struct SentGift {
    pub(crate) gift_id: String,
    pub(crate) send_us: u64,
    /// When the sender received the receipt (wall clock).
    pub(crate) ack_us: u64,
    pub(crate) room: String,
}

/// Checks one member's view of a room's event sequence.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqCheck {
    pub(crate) expected: u64,
    pub(crate) events: u64,
    pub(crate) gaps: u64,
    pub(crate) repeats: u64,
}

impl SeqCheck {
    fn from_snapshot(seq: u64) -> SeqCheck {
        SeqCheck {
            expected: seq + 1,
            ..SeqCheck::default()
        }
    }

    fn see(&mut self, seq: u64) {
        self.events += 1;
        if seq == self.expected {
            self.expected += 1;
        } else if seq > self.expected {
            self.gaps += seq - self.expected;
            self.expected = seq + 1;
        } else {
            self.repeats += 1;
        }
    }
}

/// A tiny xorshift generator: reproducible command mixes without another dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Streamers

pub(crate) struct StreamerPlan {
    pub(crate) target: SocketAddr,
    pub(crate) user: String,
    pub(crate) room: String,
    /// Answer every question and thank every `thank_every`-th gift (0: never).
    pub(crate) answer_questions: bool,
    pub(crate) thank_every: u64,
    /// Run a goal of this many coins all the time (0: none): set one at the start and a new one
    /// whenever it is reached.
    pub(crate) goal_coins: u64,
    /// Keep challenging this room to PK battles, one after another (`None`: never challenge).
    pub(crate) pk_challenge: Option<String>,
}

/// A streamer's PK battles: the one its room is in, and whether a challenge is on its way.
#[derive(Default)]
struct Pk {
    battle: Option<String>,
    challenging: bool,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct StreamerOut {
    pub(crate) seq: SeqCheck,
    /// Room events seen, by kind (gifts, combo ends, goal events, ...).
    pub(crate) events: BTreeMap<String, u64>,
    pub(crate) commands: BTreeMap<&'static str, Hist>,
    pub(crate) errors: Counts,
    pub(crate) closed_early: Option<String>,
}

pub(crate) struct Streamer {
    pub(crate) room: String,
    pub(crate) last_seq: Arc<AtomicU64>,
    /// The room's viewer count (the cluster's) from its latest `viewers` event.
    pub(crate) viewers: Arc<AtomicU64>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<StreamerOut>>,
}

impl Streamer {
    /// Connects and opens the room; returns once the room is open.
    pub(crate) async fn open(plan: StreamerPlan, minter: &Minter) -> Result<Streamer> {
        let token = minter.mint(&plan.user, Role::Streamer)?;
        let (ws, seq) = tokio::time::timeout(SETUP_TIMEOUT, async {
            let mut ws = net::connect_ws(plan.target, None, &token).await?;
            expect_reply(&mut ws, None).await?;
            ws.send(Message::text(wire::open_room(1, &plan.room, "giftd-load")))
                .await?;
            let ack = expect_reply(&mut ws, Some(1)).await?;
            let seq = ack.result.and_then(|r| r.seq).unwrap_or(0);
            anyhow::Ok((ws, seq))
        })
        .await
        .context("opening a room timed out")?
        .with_context(|| format!("opening room {}", plan.room))?;
        let last_seq = Arc::new(AtomicU64::new(seq));
        let (stop, stopped) = oneshot::channel();
        let room = plan.room.clone();
        let viewers = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(streamer_loop(
            ws,
            plan,
            seq,
            (last_seq.clone(), viewers.clone()),
            stopped,
        ));
        Ok(Streamer {
            room,
            last_seq,
            viewers,
            stop,
            task,
        })
    }

    /// Closes the room and returns what the streamer saw.
    pub(crate) async fn close(self) -> Result<StreamerOut> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

async fn streamer_loop(
    mut ws: Ws,
    plan: StreamerPlan,
    snapshot_seq: u64,
    (last_seq, viewers): (Arc<AtomicU64>, Arc<AtomicU64>),
    mut stopped: oneshot::Receiver<()>,
) -> Result<StreamerOut> {
    let mut out = StreamerOut {
        seq: SeqCheck::from_snapshot(snapshot_seq),
        ..StreamerOut::default()
    };
    let mut inflight: HashMap<u64, (Instant, &'static str)> = HashMap::new();
    let mut next_id = 2u64;
    let mut gifts = 0u64;
    let mut pk = Pk::default();
    // A challenge that failed (the rival room not open yet, busy) is tried again on the next beat.
    let mut pk_beat = tokio::time::interval(Duration::from_secs(1));
    if plan.goal_coins > 0 {
        inflight.insert(next_id, (Instant::now(), "set_goal"));
        ws.send(Message::text(wire::set_goal(next_id, plan.goal_coins)))
            .await?;
        next_id += 1;
    }
    loop {
        let msg = tokio::select! {
            _ = &mut stopped => break,
            msg = ws.next() => msg,
            _ = pk_beat.tick() => {
                if let (Some(rival), None, false) = (&plan.pk_challenge, &pk.battle, pk.challenging) {
                    pk.challenging = true;
                    inflight.insert(next_id, (Instant::now(), "pk_challenge"));
                    ws.send(Message::text(wire::pk_challenge(next_id, rival))).await?;
                    next_id += 1;
                }
                continue;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                out.closed_early =
                    Some(f.map_or("close".into(), |f| format!("close {}", u16::from(f.code))));
                return Ok(out);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                out.closed_early = Some(format!("error: {e}"));
                return Ok(out);
            }
            None => {
                out.closed_early = Some("eof".into());
                return Ok(out);
            }
        };
        if let Some(ev) = wire::scan_event(text.as_str()) {
            out.seq.see(ev.seq);
            *out.events.entry(ev.kind.to_owned()).or_default() += 1;
            last_seq.store(out.seq.expected - 1, Ordering::Relaxed);
            if let Some(count) = wire::viewer_count_of_event(text.as_str()) {
                viewers.store(count, Ordering::Relaxed);
            }
            let reply = match ev.kind {
                "question" if plan.answer_questions => wire::question_id_of_event(text.as_str())
                    .map(|q| ("answer", wire::answer(next_id, q, "good question"))),
                "gift" if plan.thank_every > 0 => {
                    gifts += 1;
                    (gifts % plan.thank_every == 0)
                        .then(|| ev.gift_id.map(|g| ("thank", wire::thank(next_id, g))))
                        .flatten()
                }
                // The new goal replaces the reached one (its `goal_ended` is not answered).
                "goal_reached" if plan.goal_coins > 0 => {
                    Some(("set_goal", wire::set_goal(next_id, plan.goal_coins)))
                }
                // The challenged streamer accepts at once; either side is then in the battle.
                "pk_invite" => wire::pk_of_event(text.as_str()).and_then(|(battle, opponent)| {
                    pk.battle = Some(battle.clone());
                    (opponent == plan.room)
                        .then(|| ("pk_accept", wire::pk_accept(next_id, &battle)))
                }),
                "pk_ended" => {
                    pk.battle = None;
                    None
                }
                _ => None,
            };
            if let Some((name, msg)) = reply {
                inflight.insert(next_id, (Instant::now(), name));
                next_id += 1;
                ws.send(Message::text(msg)).await?;
            }
            continue;
        }
        if let Some(reply) = wire::parse_reply(text.as_str()) {
            let Some((started, name)) = reply.id.and_then(|id| inflight.remove(&id)) else {
                continue;
            };
            if name == "pk_challenge" {
                pk.challenging = false;
            }
            match reply.kind.as_str() {
                "ack" => out
                    .commands
                    .entry(name)
                    .or_default()
                    .record_us(started.elapsed().as_micros() as u64),
                _ => {
                    *out.errors
                        .entry(format!("{name}: {}", reply.reason.unwrap_or_default()))
                        .or_default() += 1
                }
            }
        }
    }
    // Close the room; bounded wait for the ack.
    let id = next_id;
    ws.send(Message::text(wire::close_room(id))).await?;
    let closed =
        tokio::time::timeout(Duration::from_secs(5), expect_reply(&mut ws, Some(id))).await;
    if !matches!(closed, Ok(Ok(_))) {
        *out.errors.entry("close_room failed".into()).or_default() += 1;
    }
    let _ = ws.close(None).await;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Senders

/// What a sender sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mix {
    /// Only `send_gift` with one sticker.
    Gifts,
    /// Gifts of varied stickers, paid and free questions, leaderboard reads, balance and ping.
    Mixed,
}

#[derive(Debug, Clone)]
pub(crate) struct SenderPlan {
    pub(crate) target: SocketAddr,
    pub(crate) index: usize,
    pub(crate) user: String,
    pub(crate) room: String,
    /// Commands per second; 0 runs closed-loop (as fast as the window allows).
    pub(crate) rate_per_sec: f64,
    /// Commands in flight at most.
    pub(crate) pipeline: usize,
    pub(crate) duration: Duration,
    pub(crate) commands_max: u64,
    pub(crate) sticker: String,
    pub(crate) mix: Mix,
    pub(crate) key_prefix: String,
    /// Time allowed after the end for acks still in flight.
    pub(crate) drain: Duration,
    /// Acks received, shared by all senders of a run (for the progress bar).
    pub(crate) acked: Arc<AtomicU64>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SenderOut {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Acks that were replays of an earlier key (none expected: keys are unique).
    pub(crate) replayed: u64,
    pub(crate) unanswered: u64,
    /// Commands the server refused with `room_busy` (it shed load; nothing was charged). A load
    /// the node cannot keep up with is expected to get these, so they are not errors.
    pub(crate) busy: u64,
    pub(crate) errors: Counts,
    /// Send to ack, by command name.
    pub(crate) commands: BTreeMap<&'static str, Hist>,
    pub(crate) gift_ids: Vec<String>,
    pub(crate) first_send_us: u64,
    pub(crate) last_ack_us: u64,
    pub(crate) seq: SeqCheck,
    pub(crate) private_messages: u64,
    pub(crate) closed_early: Option<String>,
}

impl SenderOut {
    pub(crate) fn merge(&mut self, o: &SenderOut) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.replayed += o.replayed;
        self.unanswered += o.unanswered;
        self.busy += o.busy;
        add_counts(&mut self.errors, &o.errors);
        for (k, h) in &o.commands {
            self.commands.entry(k).or_default().merge(h);
        }
        self.gift_ids.extend(o.gift_ids.iter().cloned());
        self.first_send_us = match (self.first_send_us, o.first_send_us) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_ack_us = self.last_ack_us.max(o.last_ack_us);
        self.seq.events += o.seq.events;
        self.seq.gaps += o.seq.gaps;
        self.seq.repeats += o.seq.repeats;
        self.private_messages += o.private_messages;
        if o.closed_early.is_some() {
            self.closed_early = o.closed_early.clone();
        }
    }
}

/// A connected sender, in its room, waiting to start.
pub(crate) struct Sender {
    plan: SenderPlan,
    ws: Ws,
    snapshot_seq: u64,
}

impl Sender {
    pub(crate) async fn connect(plan: SenderPlan, minter: &Minter) -> Result<Sender> {
        let token = minter.mint(&plan.user, Role::Viewer)?;
        let (ws, snapshot_seq) = tokio::time::timeout(SETUP_TIMEOUT, async {
            let mut ws = net::connect_ws(plan.target, None, &token).await?;
            expect_reply(&mut ws, None).await?;
            ws.send(Message::text(wire::join(1, &plan.room))).await?;
            let ack = expect_reply(&mut ws, Some(1)).await?;
            anyhow::Ok((ws, ack.result.and_then(|r| r.seq).unwrap_or(0)))
        })
        .await
        .context("sender setup timed out")??;
        Ok(Sender {
            plan,
            ws,
            snapshot_seq,
        })
    }

    /// Runs the plan; `sent` receives each committed `send_gift`.
    pub(crate) async fn run(self, sent: mpsc::UnboundedSender<SentGift>) -> SenderOut {
        let Sender {
            plan,
            mut ws,
            snapshot_seq,
        } = self;
        let mut out = SenderOut {
            seq: SeqCheck::from_snapshot(snapshot_seq),
            ..SenderOut::default()
        };
        if let Err(e) = send_loop(&plan, &mut ws, &mut out, &sent).await {
            out.closed_early = Some(format!("{e:#}"));
        }
        let _ = ws.close(None).await;
        out
    }
}

struct InFlight {
    started: Instant,
    send_us: u64,
    name: &'static str,
}

const MIX_STICKERS: [&str; 3] = ["rose", "heart", "clap"];
/// Each mixed `leaderboard` command reads one of these boards around its own sender.
const LEADERBOARDS: [&str; 3] = ["session", "window", "all_time"];

fn next_command(plan: &SenderPlan, rng: &mut Rng, id: u64) -> (&'static str, String) {
    let key = format!("{}-{}-{id}", plan.key_prefix, plan.index);
    if plan.mix == Mix::Gifts {
        return ("send_gift", wire::send_gift(id, &plan.sticker, &key));
    }
    match rng.below(100) {
        0..=59 => {
            let sticker = MIX_STICKERS[rng.below(MIX_STICKERS.len() as u64) as usize];
            ("send_gift", wire::send_gift(id, sticker, &key))
        }
        60..=69 => (
            "ask_paid",
            wire::ask(id, "a paid question?", Some(("coffee", &key))),
        ),
        70..=79 => ("ask", wire::ask(id, "a free question?", None)),
        80..=84 => ("balance", wire::balance(id)),
        85..=89 => {
            let board = LEADERBOARDS[rng.below(LEADERBOARDS.len() as u64) as usize];
            ("leaderboard", wire::leaderboard(id, board, &plan.user))
        }
        _ => ("ping", wire::ping(id)),
    }
}

async fn send_loop(
    plan: &SenderPlan,
    ws: &mut Ws,
    out: &mut SenderOut,
    sent: &mpsc::UnboundedSender<SentGift>,
) -> Result<()> {
    let start = Instant::now();
    let end = start + plan.duration;
    let hard_end = end + plan.drain;
    let period = if plan.rate_per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / plan.rate_per_sec)
            .clamp(Duration::from_millis(1), Duration::from_millis(50))
    } else {
        Duration::from_millis(50)
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rng = Rng::new(plan.index as u64 + 1);
    let mut inflight: HashMap<u64, InFlight> = HashMap::new();
    let mut next_id = 2u64;
    loop {
        let now = Instant::now();
        let sending = now < end && out.sent < plan.commands_max;
        if (!sending && inflight.is_empty()) || now >= hard_end {
            break;
        }
        if sending {
            let due = if plan.rate_per_sec > 0.0 {
                ((now - start).as_secs_f64() * plan.rate_per_sec) as u64 + 1
            } else {
                u64::MAX
            };
            let mut fed = false;
            while out.sent < due.min(plan.commands_max) && inflight.len() < plan.pipeline {
                let id = next_id;
                next_id += 1;
                let (name, text) = next_command(plan, &mut rng, id);
                let send_us = wall_us();
                if out.first_send_us == 0 {
                    out.first_send_us = send_us;
                }
                inflight.insert(
                    id,
                    InFlight {
                        started: Instant::now(),
                        send_us,
                        name,
                    },
                );
                ws.feed(Message::text(text)).await?;
                out.sent += 1;
                fed = true;
            }
            if fed {
                ws.flush().await?;
            }
        }
        let msg = tokio::select! {
            _ = tick.tick() => continue,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                anyhow::bail!(
                    "closed by the server: {}",
                    f.map_or("no code".into(), |f| format!(
                        "{} {}",
                        u16::from(f.code),
                        f.reason
                    ))
                )
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("connection ended"),
        };
        if let Some(ev) = wire::scan_event(text.as_str()) {
            out.seq.see(ev.seq);
            continue;
        }
        let Some(reply) = wire::parse_reply(text.as_str()) else {
            continue;
        };
        if matches!(reply.kind.as_str(), "thanks" | "answered") {
            out.private_messages += 1;
            continue;
        }
        let Some(f) = reply.id.and_then(|id| inflight.remove(&id)) else {
            continue;
        };
        let ack_us = wall_us();
        match reply.kind.as_str() {
            "ack" => {
                out.acked += 1;
                plan.acked.fetch_add(1, Ordering::Relaxed);
                out.last_ack_us = ack_us;
                out.commands
                    .entry(f.name)
                    .or_default()
                    .record_us(f.started.elapsed().as_micros() as u64);
                let result = reply.result.unwrap_or_default();
                let (gift_id, replayed) = match result.receipt {
                    Some(r) => (r.gift_id, r.replayed),
                    None => (result.gift_id, result.replayed),
                };
                if replayed == Some(true) {
                    out.replayed += 1;
                }
                if let Some(gift_id) = gift_id {
                    if f.name == "send_gift" {
                        let _ = sent.send(SentGift {
                            gift_id: gift_id.clone(),
                            send_us: f.send_us,
                            ack_us,
                            room: plan.room.clone(),
                        });
                    }
                    out.gift_ids.push(gift_id);
                }
            }
            _ if reply.reason.as_deref() == Some("room_busy") => out.busy += 1,
            _ => {
                *out.errors
                    .entry(format!("{}: {}", f.name, reply.reason.unwrap_or_default()))
                    .or_default() += 1;
            }
        }
    }
    out.unanswered = inflight.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_check_counts_gaps_and_repeats() {
        let mut s = SeqCheck::from_snapshot(4);
        for seq in [5, 6, 8, 8, 9] {
            s.see(seq);
        }
        assert_eq!((s.events, s.gaps, s.repeats, s.expected), (5, 1, 1, 10));
    }
}
