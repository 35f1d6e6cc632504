//! What every scenario shares: the run context (target, spawned server, tokens, run id), worker
//! planning, progress bars, and the rooms harness used by `fanout` and `mixed` (streamers open
//! rooms, workers fill them with viewers, senders send, viewers verify and time every event).

pub(crate) mod fanout;
pub(crate) mod gifts;
pub(crate) mod idle;
pub(crate) mod mixed;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use crate::actors::{
    Mix, Sender, SenderOut, SenderPlan, SentGift, Streamer, StreamerOut, StreamerPlan,
};
use crate::cli::{AuditArgs, Common};
use crate::cluster::{Cluster, ClusterOptions};
use crate::net::{self, wall_us, SourcePlan};
use crate::pool::{shares, Pool};
use crate::server::{self, SpawnOptions, Spawned};
use crate::stats::{add_counts, Counts, Hist, Report};
use crate::tokens::Minter;
use crate::worker::{Ready, WorkerResult, WorkerSpec};

/// Coins credited to each sender: enough for any run, and the largest top-up giftd accepts.
const SENDER_COINS: u64 = giftd::bounds::TOPUP_COINS_MAX;

pub(crate) struct Ctx {
    pub(crate) common: Common,
    /// The first node: where streamers open rooms.
    pub(crate) target: SocketAddr,
    /// Every node, in order; viewers and senders go round-robin over them.
    pub(crate) targets: Vec<SocketAddr>,
    /// The admin listeners, for top-ups and health (any of them: one shared ledger).
    pub(crate) admins: Vec<SocketAddr>,
    pub(crate) run_id: String,
    pub(crate) minter: Arc<Minter>,
    pub(crate) spawned: Option<Spawned>,
    pub(crate) cluster: Option<Cluster>,
    /// The first node's pid.
    pub(crate) server_pid: Option<u32>,
    /// Each node's pid, where known (for CPU and RSS readings).
    pub(crate) node_pids: Vec<Option<u32>>,
    /// The NATS server's pid (given, or the one `nats-server` process), for its CPU.
    pub(crate) nats_pid: Option<u32>,
    /// First source address octet of this run (rotated between runs, away from TIME_WAITs).
    source_octet: u8,
}

impl Ctx {
    /// Resolves (or spawns) the targets. `connections` sizes a spawned server's limit.
    pub(crate) async fn new(common: Common, connections: usize) -> Result<Ctx> {
        let nonce = wall_us() ^ u64::from(std::process::id()) << 20;
        let run_id = format!("{:08x}", nonce & 0xffff_ffff);
        let connections_max = (connections + 200).max(1_000);
        if common.spawn_nodes > 0 && common.spawn_server.is_none() {
            bail!("--spawn-nodes needs --spawn-server");
        }
        let (spawned, cluster) = match &common.spawn_server {
            Some(bin) if common.spawn_nodes > 0 => {
                let cluster = Cluster::start(ClusterOptions {
                    bin,
                    nodes: common.spawn_nodes,
                    connections_max,
                    env: &common.server_env,
                    keep_dir: common.keep_server_dir,
                    run_id: &run_id,
                    nats_url: &common.nats_url,
                    postgres_url: &common.postgres_url,
                })
                .await?;
                (None, Some(cluster))
            }
            Some(bin) => {
                let spawned = Spawned::start(SpawnOptions {
                    bin,
                    connections_max,
                    env: &common.server_env,
                    keep_dir: common.keep_server_dir,
                    run_id: &run_id,
                    node: None,
                })
                .await?;
                (Some(spawned), None)
            }
            None => (None, None),
        };
        let nodes: Vec<&Spawned> = spawned
            .iter()
            .chain(cluster.iter().flat_map(|c| &c.nodes))
            .collect();
        let (targets, admins, node_pids) = if nodes.is_empty() {
            let mut targets = Vec::new();
            for t in &common.target {
                targets.push(net::resolve_loopback(t).await?);
            }
            let mut admins = Vec::new();
            for t in &common.admin_target {
                admins.push(net::resolve_loopback(t).await?);
            }
            if targets.is_empty() || admins.is_empty() {
                bail!("--target and --admin-target need at least one address each");
            }
            let mut pids: Vec<Option<u32>> = targets
                .iter()
                .map(|t| server::pid_listening_on(t.port()))
                .collect();
            if common.server_pid.is_some() {
                pids[0] = common.server_pid;
            }
            (targets, admins, pids)
        } else {
            (
                nodes.iter().map(|s| s.addr).collect(),
                nodes.iter().map(|s| s.admin).collect(),
                nodes.iter().map(|s| Some(s.pid)).collect(),
            )
        };
        let nats_pid = common
            .nats_pid
            .or_else(|| server::pid_by_name("nats-server"));
        Ok(Ctx {
            nats_pid,
            minter: Arc::new(Minter::new(&common.jwt_secret)),
            source_octet: 2 + (nonce % 200) as u8,
            common,
            target: targets[0],
            server_pid: node_pids[0],
            targets,
            admins,
            node_pids,
            run_id,
            spawned,
            cluster,
        })
    }

    /// The server processes this run started (one, or a cluster's nodes).
    pub(crate) fn spawned_nodes(&self) -> Vec<&Spawned> {
        self.spawned
            .iter()
            .chain(self.cluster.iter().flat_map(|c| &c.nodes))
            .collect()
    }

    /// The node that connection (or sender) `i` of a run goes to: round-robin.
    pub(crate) fn node_of(&self, i: usize) -> usize {
        i % self.targets.len()
    }

    pub(crate) fn report(&self, scenario: &str, params: serde_json::Value) -> Report {
        let targets: Vec<String> = self.targets.iter().map(|t| t.to_string()).collect();
        let mut r = Report::new(scenario, &self.run_id, targets.join(","));
        r.server_pid = self.server_pid;
        r.params = params;
        r
    }

    pub(crate) fn bar(&self, len: u64, prefix: &str) -> ProgressBar {
        let bar = ProgressBar::new(len);
        if self.common.quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:40.cyan/blue}] {pos:>7}/{len:7} {elapsed:>4} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_owned());
        bar
    }

    /// Worker specs for `total` passive connections named `<prefix><n>`: connection `n` goes
    /// to node `n % nodes`, and each worker holds connections of one node only.
    pub(crate) fn worker_specs(
        &self,
        total: usize,
        role: &str,
        rooms: &[String],
    ) -> Vec<WorkerSpec> {
        let sources = SourcePlan::for_target(
            self.target,
            total,
            self.common.conns_per_source_ip,
            self.source_octet,
        );
        let nodes = self.targets.len();
        let mut specs = Vec::new();
        for (node, target) in self.targets.iter().enumerate() {
            // Run-wide indices node, node + nodes, node + 2 * nodes, ... below total.
            let on_node = (total + nodes - 1 - node) / nodes;
            for (first, count) in shares(on_node, self.common.conns_per_worker) {
                specs.push(WorkerSpec {
                    worker: specs.len(),
                    node,
                    target: *target,
                    jwt_secret: self.common.jwt_secret.clone(),
                    sources: sources.clone(),
                    first: node + first * nodes,
                    stride: nodes,
                    count,
                    user_prefix: format!("{role}-{}-", self.run_id),
                    rooms: rooms.to_vec(),
                    connect_concurrency: self.common.connect_concurrency,
                    connect_timeout_ms: self.common.connect_timeout_ms,
                });
            }
        }
        specs
    }

    /// Stops a spawned server or cluster (cleanly, so its ledger is complete).
    pub(crate) fn stop_server(&mut self) -> bool {
        let mut clean = true;
        if let Some(s) = &mut self.spawned {
            clean &= s.stop(Duration::from_secs(30));
        }
        if let Some(c) = &mut self.cluster {
            clean &= c.stop(Duration::from_secs(30));
        }
        clean
    }

    /// The ledger and binary to audit, from the spawned server or the audit flags.
    pub(crate) fn audit_paths(&self, audit: &AuditArgs) -> Result<Option<(PathBuf, PathBuf)>> {
        if !audit.audit && audit.audit_db.is_none() {
            return Ok(None);
        }
        if self.cluster.is_some() {
            bail!("--audit reads a SQLite ledger; a spawned cluster's ledger is PostgreSQL");
        }
        let db = audit
            .audit_db
            .clone()
            .or(self.spawned.as_ref().map(|s| s.db.clone()))
            .context("--audit needs --spawn-server or --audit-db")?;
        let bin = audit
            .giftd_bin
            .clone()
            .or(self.spawned.as_ref().map(|s| s.bin.clone()))
            .context("--audit-db needs --giftd-bin")?;
        Ok(Some((db, bin)))
    }
}

/// Audits the ledger if asked, adding the result to `report`.
pub(crate) fn audit_into(
    ctx: &mut Ctx,
    audit: &AuditArgs,
    gift_ids: &[String],
    report: &mut Report,
) -> Result<()> {
    let Some((db, bin)) = ctx.audit_paths(audit)? else {
        return Ok(());
    };
    if ctx.spawned.is_some() && !ctx.stop_server() {
        report.problem("the spawned server did not exit cleanly on SIGTERM".into());
    }
    let (problems, gifts_in_ledger) = server::audit(&bin, &db, gift_ids)?;
    report.metric("audit_gifts_in_ledger", gifts_in_ledger as f64);
    report.metric("audit_receipts_checked", gift_ids.len() as f64);
    report.metric("audit_ok", problems.is_empty() as u8 as f64);
    for p in problems {
        report.problem(p);
    }
    Ok(())
}

/// `count` per second over `secs`, or 0 when no time passed.
pub(crate) fn per_sec(count: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        count / secs
    } else {
        0.0
    }
}

/// The user ids of a run's `n` senders, each credited through the admin API.
pub(crate) async fn funded_senders(ctx: &Ctx, n: usize) -> Result<Vec<String>> {
    let users: Vec<String> = (0..n).map(|i| format!("s-{}-{i}", ctx.run_id)).collect();
    top_up_all(ctx, &users).await?;
    Ok(users)
}

/// Credits every sender through the admin API, a few at a time.
pub(crate) async fn top_up_all(ctx: &Ctx, users: &[String]) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for (c, chunk) in users.chunks(32).enumerate() {
        for (j, user) in chunk.iter().enumerate() {
            // Any node's admin listener will do: they share one ledger.
            let target = ctx.admins[(c * 32 + j) % ctx.admins.len()];
            let (token, user) = (ctx.common.admin_token.clone(), user.clone());
            let purchase = format!("load-{}-{user}", ctx.run_id);
            set.spawn(
                async move { net::top_up(target, &token, &user, SENDER_COINS, &purchase).await },
            );
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(())
}

/// What the rooms harness runs.
pub(crate) struct RoomsPlan {
    pub(crate) rooms: usize,
    pub(crate) viewers: usize,
    pub(crate) senders_per_room: usize,
    pub(crate) rate_per_sec: f64,
    pub(crate) pipeline: usize,
    pub(crate) duration: Duration,
    pub(crate) catch_up: Duration,
    pub(crate) mix: Mix,
    pub(crate) sticker: String,
    pub(crate) thank_every: u64,
    /// The goal each streamer keeps running, in coins (0: none).
    pub(crate) goal_coins: u64,
    /// Rooms battle in pairs (0 and 1, 2 and 3, ...), one PK battle after another; an odd last
    /// room battles a rival room of its own, with no viewers.
    pub(crate) pk: bool,
    /// How long to wait, once every viewer's join is acknowledged, for the room's published
    /// viewer count to reach `viewers` (zero: do not wait).
    pub(crate) wait_viewer_count: Duration,
}

/// Reports the room events every streamer saw, by kind, as `room_events_<kind>`.
pub(crate) fn report_room_events(run: &RoomsRun, report: &mut Report) {
    let mut events: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &run.streamers {
        for (kind, n) in &s.events {
            *events.entry(kind).or_default() += n;
        }
    }
    for (kind, n) in events {
        report.metric(&format!("room_events_{kind}"), n as f64);
    }
}

/// What the rooms harness saw.
pub(crate) struct RoomsRun {
    pub(crate) ready: Vec<Ready>,
    pub(crate) workers: Vec<WorkerResult>,
    pub(crate) senders: SenderOut,
    pub(crate) streamers: Vec<StreamerOut>,
    /// Committed gifts: id -> (send time, receipt time, room).
    pub(crate) sent: HashMap<String, (u64, u64, String)>,
    pub(crate) final_seq: BTreeMap<String, u64>,
    /// The node (index into the targets) of each worker's connections.
    pub(crate) worker_nodes: Vec<usize>,
    /// Each node's CPU and memory over the sending window.
    pub(crate) node_usage: Vec<NodeUsage>,
    /// Each node's RSS before the viewers connected and once all had joined.
    pub(crate) node_rss_before_viewers: Vec<Option<u64>>,
    pub(crate) node_rss_viewers_joined: Vec<Option<u64>>,
    /// The NATS server's CPU while gifts were sent (% of one core).
    pub(crate) nats_cpu_percent: Option<f64>,
    /// The generator's CPU while gifts were sent (this process and its workers, % of one core).
    pub(crate) client_cpu_percent: Option<f64>,
    /// The rooms' published viewer count (summed over rooms) when sending started, and how long
    /// after the last join acknowledgement it took to get there (with `wait_viewer_count`).
    pub(crate) viewer_count: u64,
    pub(crate) viewer_count_wait_secs: Option<f64>,
}

/// One server process's CPU use while gifts were sent, and its RSS at the end of sending.
#[derive(Default, Clone)]
pub(crate) struct NodeUsage {
    pub(crate) cpu_percent: Option<f64>,
    pub(crate) rss_bytes: Option<u64>,
}

/// CPU seconds used so far by each known pid.
fn cpu_now(pids: &[Option<u32>]) -> Vec<Option<f64>> {
    pids.iter()
        .map(|p| p.and_then(|p| server::cpu_secs(p).ok()))
        .collect()
}

pub(crate) async fn run_rooms(ctx: &Ctx, plan: &RoomsPlan) -> Result<RoomsRun> {
    let rooms: Vec<String> = (0..plan.rooms)
        .map(|r| format!("load-{}-r{r}", ctx.run_id))
        .collect();
    let mut streamers = Vec::new();
    let rival = format!("load-{}-rival", ctx.run_id);
    for (r, room) in rooms.iter().enumerate() {
        // Even rooms challenge the next one (or the rival room); odd ones accept.
        let pk_challenge = (plan.pk && r % 2 == 0)
            .then(|| rooms.get(r + 1).cloned().unwrap_or_else(|| rival.clone()));
        let plan = StreamerPlan {
            target: ctx.target,
            user: format!("st-{}-{r}", ctx.run_id),
            room: room.clone(),
            answer_questions: plan.mix == Mix::Mixed,
            thank_every: plan.thank_every,
            goal_coins: plan.goal_coins,
            pk_challenge,
        };
        streamers.push(Streamer::open(plan, &ctx.minter).await?);
    }
    let rival = if plan.pk && plan.rooms % 2 == 1 {
        let plan = StreamerPlan {
            target: ctx.target,
            user: format!("st-{}-rival", ctx.run_id),
            room: rival,
            answer_questions: false,
            thank_every: 0,
            goal_coins: 0,
            pk_challenge: None,
        };
        Some(Streamer::open(plan, &ctx.minter).await?)
    } else {
        None
    };

    let rss_now = || -> Vec<Option<u64>> {
        ctx.node_pids
            .iter()
            .map(|p| p.and_then(|p| server::rss_bytes(p).ok()))
            .collect()
    };
    let node_rss_before_viewers = rss_now();
    let bar = ctx.bar(plan.viewers as u64, "viewers");
    let specs = ctx.worker_specs(plan.viewers, "v", &rooms);
    let worker_nodes: Vec<usize> = specs.iter().map(|s| s.node).collect();
    let mut pool = Pool::spawn(specs).await?;
    let ready = pool
        .wait_ready(
            &bar,
            Duration::from_millis(ctx.common.connect_timeout_ms) * 4 + Duration::from_secs(60),
        )
        .await?;
    bar.finish();
    let node_rss_viewers_joined = rss_now();
    let viewer_count_wait_secs = if plan.wait_viewer_count.is_zero() {
        None
    } else {
        Some(wait_viewer_count(ctx, &streamers, plan.viewers as u64, plan.wait_viewer_count).await)
    };
    let viewer_count: u64 = streamers
        .iter()
        .map(|s| s.viewers.load(Ordering::Relaxed))
        .sum();

    // Senders: credited, connected and in their rooms before the clock starts.
    let sender_count = plan.rooms * plan.senders_per_room;
    let users = funded_senders(ctx, sender_count).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let sp = SenderPlan {
            target: ctx.targets[ctx.node_of(i)],
            index: i,
            user: user.clone(),
            room: rooms[i % plan.rooms].clone(),
            rate_per_sec: plan.rate_per_sec / sender_count as f64,
            pipeline: plan.pipeline,
            duration: plan.duration,
            commands_max: u64::MAX,
            sticker: plan.sticker.clone(),
            mix: plan.mix,
            key_prefix: format!("k-{}", ctx.run_id),
            drain: Duration::from_secs(10),
            acked: acked.clone(),
        };
        senders.push(Sender::connect(sp, &ctx.minter).await?);
    }

    // Forward each committed gift's send time to the workers, and keep it.
    let broadcaster = pool.broadcaster();
    let (tx, mut rx) = mpsc::unbounded_channel::<SentGift>();
    let coordinator = tokio::spawn(async move {
        let mut sent = HashMap::new();
        while let Some(g) = rx.recv().await {
            broadcaster.send(&crate::worker::Control::Sent {
                gift_id: g.gift_id.clone(),
                send_us: g.send_us,
            });
            sent.insert(g.gift_id, (g.send_us, g.ack_us, g.room));
        }
        sent
    });

    let bar = ctx.bar(plan.duration.as_secs().max(1), "sending");
    let cpu_before = cpu_now(&ctx.node_pids);
    let nats_before = cpu_now(&[ctx.nats_pid]);
    let mut client_pids = pool.pids();
    client_pids.push(Some(std::process::id()));
    let client_before = cpu_now(&client_pids);
    let started = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|s| tokio::spawn(s.run(tx.clone())))
        .collect();
    drop(tx);
    let ticker = {
        let bar = bar.clone();
        let acked = acked.clone();
        let duration = plan.duration;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let secs = started.elapsed().min(duration).as_secs();
                bar.set_position(secs);
                bar.set_message(format!("acked {}", acked.load(Ordering::Relaxed)));
            }
        })
    };
    let mut out = SenderOut::default();
    for t in tasks {
        out.merge(&t.await?);
    }
    ticker.abort();
    bar.finish();
    let sending_secs = started.elapsed().as_secs_f64();
    let client_cpu_secs: Option<f64> = client_before
        .iter()
        .zip(cpu_now(&client_pids))
        .map(|(b, a)| Some(a? - (*b)?))
        .sum();
    let client_cpu_percent = client_cpu_secs.map(|s| per_sec(s, sending_secs) * 100.0);
    let nats_cpu_percent = match (nats_before[0], cpu_now(&[ctx.nats_pid])[0]) {
        (Some(b), Some(a)) => Some(per_sec(a - b, sending_secs) * 100.0),
        _ => None,
    };
    let node_usage: Vec<NodeUsage> = cpu_now(&ctx.node_pids)
        .into_iter()
        .zip(cpu_before)
        .zip(&ctx.node_pids)
        .map(|((after, before), pid)| NodeUsage {
            cpu_percent: match (before, after) {
                (Some(b), Some(a)) => Some(per_sec(a - b, sending_secs) * 100.0),
                _ => None,
            },
            rss_bytes: pid.and_then(|p| server::rss_bytes(p).ok()),
        })
        .collect();
    let sent = coordinator.await?;

    // Let the last events reach the streamers, then take each room's final seq.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let final_seq: BTreeMap<String, u64> = streamers
        .iter()
        .map(|s| (s.room.clone(), s.last_seq.load(Ordering::Relaxed)))
        .collect();
    let workers = pool.finish(final_seq.clone(), plan.catch_up).await?;
    let mut streamer_outs = Vec::new();
    for s in streamers {
        streamer_outs.push(s.close().await?);
    }
    if let Some(rival) = rival {
        rival.close().await?;
    }
    Ok(RoomsRun {
        ready,
        workers,
        senders: out,
        streamers: streamer_outs,
        sent,
        final_seq,
        worker_nodes,
        node_usage,
        node_rss_before_viewers,
        node_rss_viewers_joined,
        nats_cpu_percent,
        client_cpu_percent,
        viewer_count,
        viewer_count_wait_secs,
    })
}

/// Waits (at most `wait`, polling every 100 ms) until the rooms' published viewer counts add up
/// to `want`; returns the seconds waited. The count is the cluster's, published by the room's
/// node on its viewer-count timer, so it trails the joins by up to one interval plus the nodes'
/// reports.
async fn wait_viewer_count(ctx: &Ctx, streamers: &[Streamer], want: u64, wait: Duration) -> f64 {
    let started = Instant::now();
    let bar = ctx.bar(want, "counted");
    loop {
        let seen: u64 = streamers
            .iter()
            .map(|s| s.viewers.load(Ordering::Relaxed))
            .sum();
        bar.set_position(seen.min(want));
        if seen >= want || started.elapsed() >= wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bar.finish();
    started.elapsed().as_secs_f64()
}

/// Viewer-side findings of a rooms run: delivery latency, loss, throughput.
pub(crate) struct Deliveries {
    pub(crate) delivery: Hist,
    pub(crate) last_viewer: Hist,
    /// From the sender's receipt to the last viewer: the fan-out alone, without the commit.
    pub(crate) receipt_to_last_viewer: Hist,
    pub(crate) connect: Hist,
}

/// Turns a rooms run into report metrics and integrity problems.
pub(crate) fn analyse_rooms(run: &RoomsRun, report: &mut Report) -> Deliveries {
    let mut joined: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_errors = Counts::new();
    let (mut connected, mut failed) = (0, 0);
    for r in &run.ready {
        connected += r.connected;
        failed += r.failed;
        for (room, n) in &r.joined {
            *joined.entry(room.clone()).or_default() += n;
        }
        add_counts(&mut connect_errors, &r.connect_errors);
    }
    let mut d = Deliveries {
        delivery: Hist::default(),
        last_viewer: Hist::default(),
        receipt_to_last_viewer: Hist::default(),
        connect: Hist::default(),
    };
    let mut per_gift: HashMap<&str, (u64, u64)> = HashMap::new();
    let (mut events, mut gift_events, mut gaps, mut repeats, mut behind, mut closed, mut unmatched) =
        (0, 0, 0, 0, 0, 0, 0);
    let mut close_codes = Counts::new();
    for w in &run.workers {
        d.delivery.merge(&Hist::from_pairs(&w.delivery_us));
        d.connect.merge(&Hist::from_pairs(&w.connect_us));
        events += w.events;
        gift_events += w.gift_events;
        gaps += w.gaps;
        repeats += w.repeats;
        behind += w.behind;
        closed += w.closed_early;
        unmatched += w.unmatched;
        add_counts(&mut close_codes, &w.close_codes);
        for g in &w.gifts {
            let e = per_gift.entry(g.gift_id.as_str()).or_default();
            e.0 += g.deliveries;
            e.1 = e.1.max(g.last_recv_us);
        }
    }
    let mut missing = 0u64;
    let mut gifts_short = 0u64;
    let mut last_recv_us = 0u64;
    for (gift_id, (send_us, ack_us, room)) in &run.sent {
        let want = joined.get(room).copied().unwrap_or(0);
        let (got, last) = per_gift.get(gift_id.as_str()).copied().unwrap_or((0, 0));
        if got < want {
            missing += want - got;
            gifts_short += 1;
        }
        if got > 0 {
            d.last_viewer.record_us(last.saturating_sub(*send_us));
            d.receipt_to_last_viewer
                .record_us(last.saturating_sub(*ack_us));
            last_recv_us = last_recv_us.max(last);
        }
    }
    let window_secs = if run.senders.first_send_us > 0 && last_recv_us > run.senders.first_send_us {
        (last_recv_us - run.senders.first_send_us) as f64 / 1e6
    } else {
        0.0
    };
    let s = &run.senders;
    let gifts_acked = s.commands.get("send_gift").map_or(0, Hist::len);
    let send_secs = if s.last_ack_us > s.first_send_us {
        (s.last_ack_us - s.first_send_us) as f64 / 1e6
    } else {
        0.0
    };
    let connect_start = run.ready.iter().map(|r| r.connect_start_us).min();
    let connect_end = run.ready.iter().map(|r| r.connect_end_us).max();
    if let (Some(start), Some(end)) = (connect_start, connect_end) {
        // From the first viewer's connect to the last one's join acknowledgement.
        let secs = end.saturating_sub(start) as f64 / 1e6;
        report.metric("viewers_connect_secs", secs);
        report.metric("viewers_joined_per_sec", per_sec(connected as f64, secs));
    }
    report.metric("viewers_connected", connected as f64);
    report.metric("viewers_failed", failed as f64);
    report.metric("worker_processes", run.workers.len() as f64);
    report.metric("commands_sent", s.sent as f64);
    report.metric("commands_acked", s.acked as f64);
    report.metric("gifts_committed", gifts_acked as f64);
    report.metric("gifts_per_sec", per_sec(gifts_acked as f64, send_secs));
    report.metric("viewer_events", events as f64);
    report.metric("gift_deliveries", gift_events as f64);
    report.metric(
        "gift_deliveries_per_sec",
        per_sec(gift_events as f64, window_secs),
    );
    report.metric("gift_deliveries_missing", missing as f64);
    report.metric("viewer_seq_gaps", gaps as f64);
    report.metric("viewer_seq_repeats", repeats as f64);
    report.metric("viewers_behind_at_end", behind as f64);
    report.metric("viewers_closed_early", closed as f64);

    if failed > 0 {
        report.problem(format!(
            "{failed} viewer(s) failed to connect or join: {connect_errors:?}"
        ));
    }
    if missing > 0 {
        report.problem(format!(
            "{missing} gift deliveries missing over {gifts_short} gift(s)"
        ));
    }
    if gaps > 0 || repeats > 0 {
        report.problem(format!(
            "viewers saw {gaps} missing seq(s) and {repeats} repeated/out-of-order"
        ));
    }
    if behind > 0 {
        report.problem(format!(
            "{behind} viewer(s) had not reached the final seq {:?}",
            run.final_seq
        ));
    }
    if closed > 0 {
        report.problem(format!(
            "{closed} viewer connection(s) closed early: {close_codes:?}"
        ));
    }
    if unmatched > 0 {
        report.problem(format!(
            "{unmatched} gift deliveries for gifts no sender committed"
        ));
    }
    if let Some(secs) = run.viewer_count_wait_secs {
        let want: u64 = joined.values().sum();
        report.metric("room_viewer_count", run.viewer_count as f64);
        report.metric("room_viewer_count_wait_secs", secs);
        if run.viewer_count < want {
            report.problem(format!(
                "the room's viewer count reached {} of {want} joined viewers",
                run.viewer_count
            ));
        }
    }
    sender_problems(s, report);
    per_node(run, report);
    for (i, st) in run.streamers.iter().enumerate() {
        if st.seq.gaps > 0 || st.seq.repeats > 0 {
            report.problem(format!(
                "streamer {i} saw {} gap(s), {} repeat(s)",
                st.seq.gaps, st.seq.repeats
            ));
        }
        if let Some(c) = &st.closed_early {
            report.problem(format!("streamer {i} disconnected: {c}"));
        }
        if !st.errors.is_empty() {
            report.problem(format!("streamer {i} errors: {:?}", st.errors));
        }
    }
    d
}

/// Per-node figures: each node's viewers, their deliveries per second and gift-to-last-viewer
/// latency (the last viewer on that node), and the node's CPU and RSS while gifts were sent.
fn per_node(run: &RoomsRun, report: &mut Report) {
    let nodes = run.node_usage.len().max(1);
    if let Some(cpu) = run.nats_cpu_percent {
        report.metric("nats_cpu_percent_while_sending", cpu);
    }
    // CPU per gift delivery, server and client: % of a core is 10,000 µs of CPU per second.
    let deliveries_per_sec = report.metrics.get("gift_deliveries_per_sec").copied();
    let per_delivery = |cpu_percent: f64| {
        deliveries_per_sec
            .filter(|d| *d > 0.0)
            .map(|d| cpu_percent * 10_000.0 / d)
    };
    if let Some(cpu) = run.client_cpu_percent {
        report.metric("client_cpu_percent_while_sending", cpu);
        if let Some(us) = per_delivery(cpu) {
            report.metric("client_cpu_us_per_delivery", us);
        }
    }
    let server_cpu: Option<f64> = run.node_usage.iter().map(|u| u.cpu_percent).sum();
    if let Some(us) = server_cpu.and_then(per_delivery) {
        report.metric("server_cpu_us_per_delivery", us);
    }
    for (node, usage) in run.node_usage.iter().enumerate() {
        let name = format!("node{node}");
        let viewers: u64 = run
            .ready
            .iter()
            .zip(&run.worker_nodes)
            .filter(|(_, n)| **n == node)
            .map(|(r, _)| r.connected)
            .sum();
        let before = run.node_rss_before_viewers.get(node).copied().flatten();
        let joined = run.node_rss_viewers_joined.get(node).copied().flatten();
        if let (Some(before), Some(joined)) = (before, joined) {
            report.metric(&format!("{name}_rss_bytes_viewers_joined"), joined as f64);
            if viewers > 0 {
                // Joined viewers' cost: connection, session and room membership together.
                let per_conn = joined.saturating_sub(before) as f64 / viewers as f64;
                report.metric(&format!("{name}_rss_bytes_per_viewer"), per_conn);
            }
        }
        if let Some(cpu) = usage.cpu_percent {
            report.metric(&format!("{name}_cpu_percent_while_sending"), cpu);
        }
        if let Some(rss) = usage.rss_bytes {
            report.metric(&format!("{name}_rss_bytes_end_of_sending"), rss as f64);
        }
    }
    if nodes < 2 {
        return;
    }
    for node in 0..nodes {
        let name = format!("node{node}");
        let mine = || {
            run.workers
                .iter()
                .zip(&run.worker_nodes)
                .filter(move |(_, n)| **n == node)
                .map(|(w, _)| w)
        };
        let viewers: u64 = run
            .ready
            .iter()
            .zip(&run.worker_nodes)
            .filter(|(_, n)| **n == node)
            .map(|(r, _)| r.connected)
            .sum();
        let deliveries: u64 = mine().map(|w| w.gift_events).sum();
        let mut last: HashMap<&str, u64> = HashMap::new();
        for g in mine().flat_map(|w| &w.gifts) {
            let e = last.entry(g.gift_id.as_str()).or_default();
            *e = (*e).max(g.last_recv_us);
        }
        let mut hist = Hist::default();
        let mut last_recv_us = 0;
        for (gift_id, (send_us, _, _)) in &run.sent {
            if let Some(l) = last.get(gift_id.as_str()) {
                hist.record_us(l.saturating_sub(*send_us));
                last_recv_us = last_recv_us.max(*l);
            }
        }
        let first = run.senders.first_send_us;
        let window_secs = if first > 0 && last_recv_us > first {
            (last_recv_us - first) as f64 / 1e6
        } else {
            0.0
        };
        report.metric(&format!("{name}_viewers_connected"), viewers as f64);
        report.metric(&format!("{name}_gift_deliveries"), deliveries as f64);
        report.metric(
            &format!("{name}_gift_deliveries_per_sec"),
            per_sec(deliveries as f64, window_secs),
        );
        report.latency(&format!("{name} gift to last viewer"), &hist);
    }
}

/// Integrity problems seen by senders.
pub(crate) fn sender_problems(s: &SenderOut, report: &mut Report) {
    report.metric("commands_refused_room_busy", s.busy as f64);
    if !s.errors.is_empty() {
        report.problem(format!("command errors: {:?}", s.errors));
    }
    if s.unanswered > 0 {
        report.problem(format!("{} command(s) never answered", s.unanswered));
    }
    if s.replayed > 0 {
        report.problem(format!(
            "{} receipt(s) marked replayed for fresh keys",
            s.replayed
        ));
    }
    if s.seq.gaps > 0 || s.seq.repeats > 0 {
        report.problem(format!(
            "senders saw {} missing seq(s) and {} repeated",
            s.seq.gaps, s.seq.repeats
        ));
    }
    if let Some(c) = &s.closed_early {
        report.problem(format!("a sender's connection failed: {c}"));
    }
}

/// Fails early on arguments that cannot work.
pub(crate) fn check_positive(name: &str, v: usize) -> Result<()> {
    if v == 0 {
        bail!("--{name} must be at least 1");
    }
    Ok(())
}
