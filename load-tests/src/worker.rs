//! The hidden `worker` subcommand: one process holding a share of a run's passive connections
//! (idle connections or room viewers), so that a run can exceed one process's 20,000 open files.
//!
//! The parent writes a [`WorkerSpec`] as the first line of the worker's stdin; the worker
//! connects its share (bounded concurrency, each from its planned 127.0.0.x source), reports
//! progress and readiness as JSON lines on stdout, then follows [`Control`] lines on stdin:
//! `sent` tells it when each gift was sent (wall-clock micros), so it can turn every delivery into
//! a latency; `finish` gives each room's final sequence number and how long to wait for viewers to
//! catch up. It answers with one `result` line and exits. EOF on stdin also ends it.
//!
//! Every viewer checks its room's sequence numbers: the first event must be `snapshot.seq + 1`
//! and each next one exactly one more. Gaps, repeats and early closes are counted as loss.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use giftd::auth::Role;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, wall_us, SourcePlan, Ws};
use crate::stats::{Counts, Hist};
use crate::tokens::Minter;
use crate::wire;

/// A worker's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) worker: usize,
    /// Index of the node (in the run's target list) this worker's connections go to.
    pub(crate) node: usize,
    pub(crate) target: SocketAddr,
    pub(crate) jwt_secret: String,
    pub(crate) sources: SourcePlan,
    /// Run-wide index of this worker's first connection (for source addresses and user ids).
    pub(crate) first: usize,
    /// Connection `i` of this worker has the run-wide index `first + i * stride`: with N nodes,
    /// run-wide connection `g` goes to node `g % N`, so each node's workers take every N-th one.
    pub(crate) stride: usize,
    pub(crate) count: usize,
    pub(crate) user_prefix: String,
    /// Connection `i` (run-wide) joins `rooms[i % rooms.len()]`; empty means idle connections.
    pub(crate) rooms: Vec<String>,
    pub(crate) connect_concurrency: usize,
    pub(crate) connect_timeout_ms: u64,
}

impl WorkerSpec {
    /// Run-wide index of this worker's connection `i`.
    fn global(&self, i: usize) -> usize {
        self.first + i * self.stride.max(1)
    }
}

/// Parent to worker, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// A gift was sent at `send_us` and committed as `gift_id`.
    Sent { gift_id: String, send_us: u64 },
    /// Wait up to `wait_ms` for every viewer to reach its room's final seq, then report.
    Finish {
        final_seq: BTreeMap<String, u64>,
        wait_ms: u64,
    },
}

/// Worker to parent, one JSON object per line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Report {
    Progress { connected: u64, failed: u64 },
    Ready(Ready),
    Result(Box<WorkerResult>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Ready {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) connect_start_us: u64,
    pub(crate) connect_end_us: u64,
    /// Viewers that joined, by room.
    pub(crate) joined: BTreeMap<String, u64>,
    pub(crate) connect_errors: Counts,
}

/// What a gift looked like from this worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GiftSeen {
    pub(crate) gift_id: String,
    pub(crate) deliveries: u64,
    pub(crate) last_recv_us: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerResult {
    pub(crate) connected: u64,
    /// Connections the server closed or that failed before the finish.
    pub(crate) closed_early: u64,
    pub(crate) close_codes: Counts,
    pub(crate) events: u64,
    pub(crate) gift_events: u64,
    /// Sum of missing sequence numbers over all viewers.
    pub(crate) gaps: u64,
    /// Events at or below a sequence number already seen.
    pub(crate) repeats: u64,
    /// Viewers that had not reached their room's final seq when the wait ended.
    pub(crate) behind: u64,
    /// Gift deliveries whose send time never arrived (gifts not sent by this run's senders).
    pub(crate) unmatched: u64,
    pub(crate) first_event_us: u64,
    pub(crate) last_event_us: u64,
    /// Delivery latency (send to each viewer's receipt of the event), microseconds.
    pub(crate) delivery_us: Vec<(u64, u64)>,
    /// Connect latency (TCP + upgrade + welcome + join), microseconds.
    pub(crate) connect_us: Vec<(u64, u64)>,
    pub(crate) gifts: Vec<GiftSeen>,
}

/// One connection's state, shared with the finish logic.
#[derive(Default)]
struct Slot {
    /// Index into the spec's rooms, when the connection joined one.
    room: Option<usize>,
    last_seq: AtomicU64,
    joined: AtomicBool,
    closed: AtomicBool,
}

#[derive(Default)]
struct GiftStat {
    deliveries: u64,
    last_recv_us: u64,
    send_us: Option<u64>,
    /// Receive times that arrived before the send time was known.
    pending: Vec<u64>,
}

#[derive(Default)]
struct Tracker {
    gifts: HashMap<String, GiftStat>,
    delivery: Hist,
    events: u64,
    gift_events: u64,
    gaps: u64,
    repeats: u64,
    first_event_us: u64,
    last_event_us: u64,
}

impl Tracker {
    fn on_delivery(&mut self, gift_id: &str, recv_us: u64) {
        self.gift_events += 1;
        let stat = match self.gifts.get_mut(gift_id) {
            Some(s) => s,
            None => self.gifts.entry(gift_id.to_owned()).or_default(),
        };
        stat.deliveries += 1;
        stat.last_recv_us = stat.last_recv_us.max(recv_us);
        match stat.send_us {
            Some(send) => self.delivery.record_us(recv_us.saturating_sub(send)),
            None => stat.pending.push(recv_us),
        }
    }

    fn on_sent(&mut self, gift_id: String, send_us: u64) {
        let stat = self.gifts.entry(gift_id).or_default();
        stat.send_us = Some(send_us);
        for recv in std::mem::take(&mut stat.pending) {
            self.delivery.record_us(recv.saturating_sub(send_us));
        }
    }
}

struct Shared {
    slots: Vec<Slot>,
    tracker: Mutex<Tracker>,
    connect: Mutex<Hist>,
    connected: AtomicU64,
    failed: AtomicU64,
    closed_early: AtomicU64,
    close_codes: Mutex<Counts>,
    connect_errors: Mutex<Counts>,
    finishing: AtomicBool,
}

fn emit(report: &Report) {
    let line = serde_json::to_string(report).expect("reports serialize");
    let mut out = std::io::stdout().lock();
    // If the parent is gone there is nobody to tell; the worker ends at stdin EOF anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bump(counts: &Mutex<Counts>, key: String) {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    *c.entry(key).or_default() += 1;
}

/// Entry point of `giftd-load worker`: runs on a current-thread runtime.
pub(crate) fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = stdin
        .next_line()
        .await?
        .context("worker: no spec on stdin")?;
    let spec: Arc<WorkerSpec> = Arc::new(serde_json::from_str(&first).context("worker spec")?);
    let minter = Arc::new(Minter::new(&spec.jwt_secret));
    let shared = Arc::new(Shared {
        slots: (0..spec.count)
            .map(|i| Slot {
                room: (!spec.rooms.is_empty()).then(|| spec.global(i) % spec.rooms.len()),
                ..Slot::default()
            })
            .collect(),
        tracker: Mutex::new(Tracker::default()),
        connect: Mutex::new(Hist::default()),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        closed_early: AtomicU64::new(0),
        close_codes: Mutex::new(Counts::new()),
        connect_errors: Mutex::new(Counts::new()),
        finishing: AtomicBool::new(false),
    });

    // Connect phase, with progress lines every 250 ms.
    let connect_start_us = wall_us();
    let sem = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                emit(&Report::Progress {
                    connected: shared.connected.load(Ordering::Relaxed),
                    failed: shared.failed.load(Ordering::Relaxed),
                });
            }
        })
    };
    for i in 0..spec.count {
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(connection(
            i,
            permit,
            spec.clone(),
            minter.clone(),
            shared.clone(),
        ));
    }
    // Wait (bounded) until every connection has either succeeded or failed.
    let deadline = Instant::now() + Duration::from_millis(spec.connect_timeout_ms + 5_000);
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < spec.count as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_end_us = wall_us();
    progress.abort();
    let mut joined = BTreeMap::new();
    for slot in &shared.slots {
        if let (Some(r), true) = (slot.room, slot.joined.load(Ordering::Relaxed)) {
            *joined.entry(spec.rooms[r].clone()).or_insert(0u64) += 1;
        }
    }
    emit(&Report::Ready(Ready {
        connected: shared.connected.load(Ordering::Relaxed),
        failed: spec.count as u64 - shared.connected.load(Ordering::Relaxed),
        connect_start_us,
        connect_end_us,
        joined,
        connect_errors: shared
            .connect_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    }));

    // Follow the parent's control lines until `finish` (or EOF).
    let (final_seq, wait_ms) = loop {
        let Some(line) = stdin.next_line().await? else {
            break (BTreeMap::new(), 0);
        };
        match serde_json::from_str::<Control>(&line) {
            Ok(Control::Sent { gift_id, send_us }) => shared
                .tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .on_sent(gift_id, send_us),
            Ok(Control::Finish { final_seq, wait_ms }) => break (final_seq, wait_ms),
            Err(e) => bail!("worker: bad control line {line:?}: {e}"),
        }
    };

    // Let viewers catch up to each room's final sequence number.
    let wait_end = Instant::now() + Duration::from_millis(wait_ms);
    let behind = |shared: &Shared| {
        shared
            .slots
            .iter()
            .filter(|s| s.joined.load(Ordering::Relaxed))
            .filter(|s| {
                let room = &spec.rooms[s.room.expect("joined slots have a room")];
                let want = final_seq.get(room).copied().unwrap_or(0);
                s.last_seq.load(Ordering::Relaxed) < want
            })
            .count() as u64
    };
    while behind(&shared) > 0 && Instant::now() < wait_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.finishing.store(true, Ordering::Relaxed);
    let behind = behind(&shared);
    tasks.abort_all();

    let tracker = std::mem::take(&mut *shared.tracker.lock().unwrap_or_else(|p| p.into_inner()));
    let unmatched = tracker.gifts.values().map(|g| g.pending.len() as u64).sum();
    let result = WorkerResult {
        connected: shared.connected.load(Ordering::Relaxed),
        closed_early: shared.closed_early.load(Ordering::Relaxed),
        close_codes: shared
            .close_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        events: tracker.events,
        gift_events: tracker.gift_events,
        gaps: tracker.gaps,
        repeats: tracker.repeats,
        behind,
        unmatched,
        first_event_us: tracker.first_event_us,
        last_event_us: tracker.last_event_us,
        delivery_us: tracker.delivery.to_pairs(),
        connect_us: shared
            .connect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_pairs(),
        gifts: tracker
            .gifts
            .into_iter()
            .filter(|(_, g)| g.deliveries > 0)
            .map(|(gift_id, g)| GiftSeen {
                gift_id,
                deliveries: g.deliveries,
                last_recv_us: g.last_recv_us,
            })
            .collect(),
    };
    emit(&Report::Result(Box::new(result)));
    Ok(())
}

/// Connects (and joins), then reads until the server closes or the worker finishes.
async fn connection(
    i: usize,
    permit: tokio::sync::OwnedSemaphorePermit,
    spec: Arc<WorkerSpec>,
    minter: Arc<Minter>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let slot = &shared.slots[i];
    let global = spec.global(i);
    let room = slot.room.map(|r| spec.rooms[r].as_str());
    let attempt = tokio::time::timeout(
        Duration::from_millis(spec.connect_timeout_ms),
        connect_and_join(&spec, &minter, global, room),
    )
    .await;
    drop(permit);
    let (mut ws, snapshot_seq) = match attempt {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            bump(
                &shared.connect_errors,
                format!("{:#}", e).chars().take(120).collect(),
            );
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            bump(&shared.connect_errors, "timeout".into());
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    shared
        .connect
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record_us(started.elapsed().as_micros() as u64);
    slot.last_seq.store(snapshot_seq, Ordering::Relaxed);
    if room.is_some() {
        slot.joined.store(true, Ordering::Relaxed);
    }
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let mut expected = snapshot_seq + 1;
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let Some(ev) = wire::scan_event(text.as_str()) else {
                    continue;
                };
                let recv_us = wall_us();
                let mut t = shared.tracker.lock().unwrap_or_else(|p| p.into_inner());
                t.events += 1;
                if t.first_event_us == 0 {
                    t.first_event_us = recv_us;
                }
                t.last_event_us = recv_us;
                if ev.seq == expected {
                    expected += 1;
                } else if ev.seq > expected {
                    t.gaps += ev.seq - expected;
                    expected = ev.seq + 1;
                } else {
                    t.repeats += 1;
                }
                if let Some(gift_id) = ev.gift_id {
                    t.on_delivery(gift_id, recv_us);
                }
                drop(t);
                slot.last_seq.store(expected - 1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or("close".to_owned(), |f| {
                    format!("close {}", u16::from(f.code))
                })
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("error: {e}"),
            None => break "eof".to_owned(),
        }
    };
    if !shared.finishing.load(Ordering::Relaxed) {
        slot.closed.store(true, Ordering::Relaxed);
        shared.closed_early.fetch_add(1, Ordering::Relaxed);
        bump(&shared.close_codes, close);
    }
}

async fn connect_and_join(
    spec: &WorkerSpec,
    minter: &Minter,
    global: usize,
    room: Option<&str>,
) -> Result<(Ws, u64)> {
    let user = format!("{}{global}", spec.user_prefix);
    let token = minter.mint(&user, Role::Viewer)?;
    let mut ws = net::connect_ws(spec.target, spec.sources.source(global), &token).await?;
    // The welcome comes first.
    expect_reply(&mut ws, None).await?;
    let Some(room) = room else {
        return Ok((ws, 0));
    };
    ws.send(Message::text(wire::join(1, room))).await?;
    let ack = expect_reply(&mut ws, Some(1)).await?;
    let seq = ack
        .result
        .and_then(|r| r.seq)
        .context("join ack without seq")?;
    Ok((ws, seq))
}

/// Reads until the non-event reply with `id` (or, for `None`, the welcome) arrives.
pub(crate) async fn expect_reply(ws: &mut Ws, id: Option<u64>) -> Result<wire::Reply> {
    // Bounded by the caller's timeout; events before the reply are skipped.
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else {
            continue;
        };
        if wire::scan_event(text.as_str()).is_some() {
            continue;
        }
        let Some(reply) = wire::parse_reply(text.as_str()) else {
            continue;
        };
        match (id, reply.kind.as_str()) {
            (None, "welcome") => return Ok(reply),
            (Some(want), "ack") if reply.id == Some(want) => return Ok(reply),
            (Some(want), "error") if reply.id == Some(want) => {
                bail!(
                    "{}: {}",
                    reply.reason.unwrap_or_default(),
                    reply.message.unwrap_or_default()
                )
            }
            _ => {}
        }
    }
    bail!("connection closed before the reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_before_the_send_time_are_kept() {
        let mut t = Tracker::default();
        t.on_delivery("g1", 1_500);
        t.on_delivery("g1", 1_700);
        assert_eq!(t.delivery.len(), 0);
        t.on_sent("g1".into(), 1_000);
        assert_eq!(t.delivery.len(), 2);
        t.on_delivery("g1", 2_000);
        assert_eq!(t.delivery.len(), 3);
        assert_eq!(t.gifts["g1"].deliveries, 3);
        assert_eq!(t.gifts["g1"].last_recv_us, 2_000);
    }
}
