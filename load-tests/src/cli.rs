//! Command-line arguments: one subcommand per scenario, sharing [`Common`] options for the
//! target, the spawned server, output files and process/address spreading.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "giftd-load",
    version,
    about = "Load generator for giftd over real WebSocket connections (loopback targets only)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Open many idle connections; report server RSS per connection and connections per second.
    Idle(IdleArgs),
    /// Rooms full of viewers and a steady stream of gifts: delivery latency, throughput, loss.
    Fanout(FanoutArgs),
    /// As many durable gifts per second as the server takes: receipt latency, optional audit.
    Gifts(GiftsArgs),
    /// Streamers, viewers and senders doing a realistic mix of commands.
    Mixed(MixedArgs),
    /// Internal: a worker process holding part of a run's connections (spec on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct Common {
    /// giftd to load, HOST:PORT; several (comma-separated or repeated) for the nodes of a
    /// cluster: viewers and senders go round-robin over them, streamers to the first, so rooms run
    /// there. Must be loopback (127.0.0.0/8 or ::1).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub(crate) target: Vec<String>,
    /// giftd's admin listener (health, metrics, top-ups), HOST:PORT; one per --target, or one
    /// for all (the nodes of a cluster share one ledger). Must be loopback.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9090")]
    pub(crate) admin_target: Vec<String>,
    /// Start this giftd binary on a free loopback port with a generated config, and stop it at
    /// the end (overrides --target).
    #[arg(long, value_name = "GIFTD_BIN")]
    pub(crate) spawn_server: Option<PathBuf>,
    /// With --spawn-server: start a cluster of this many nodes instead, on a fresh PostgreSQL
    /// schema `giftd_load_<run>` and NATS namespace `load<run>`, all removed at the end.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) spawn_nodes: usize,
    /// NATS (JetStream) of a spawned cluster.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,
    /// PostgreSQL database of a spawned cluster (the run's schema is created in it).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub(crate) postgres_url: String,
    /// Extra GIFTD_<SECTION>__<FIELD>=VALUE settings for the spawned server (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub(crate) server_env: Vec<String>,
    /// Keep the spawned server's temp directory (config, ledger, log).
    #[arg(long)]
    pub(crate) keep_server_dir: bool,
    /// The server's pid, for RSS readings (the first node's); found from the listening ports when
    /// omitted.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    /// The NATS server's pid, for its CPU while gifts are sent; found by its process name
    /// `nats-server` when omitted (and left out of the report if not exactly one runs).
    #[arg(long)]
    pub(crate) nats_pid: Option<u32>,
    #[arg(long, default_value = giftd::config::DEV_JWT_SECRET)]
    pub(crate) jwt_secret: String,
    #[arg(long, default_value = giftd::config::DEV_ADMIN_TOKEN)]
    pub(crate) admin_token: String,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Write the latency percentile plot as SVG to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<PathBuf>,
    /// Passive connections per worker process (each process may open at most 20,000 files).
    #[arg(long, default_value_t = 9_000)]
    pub(crate) conns_per_worker: usize,
    /// Connections per client source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) conns_per_source_ip: usize,
    /// Handshakes in progress at once, per worker.
    #[arg(long, default_value_t = 128)]
    pub(crate) connect_concurrency: usize,
    /// Time allowed for one connection's handshake (and join).
    #[arg(long, default_value_t = 30_000)]
    pub(crate) connect_timeout_ms: u64,
    /// Exit with status 2 when a benchmark target is missed (integrity failures always exit 1).
    #[arg(long)]
    pub(crate) enforce_targets: bool,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) connections: usize,
    /// Time to hold them open after the last one connected (RSS is sampled meanwhile).
    #[arg(long, default_value_t = 5)]
    pub(crate) hold_secs: u64,
    /// Server RSS target per idle connection.
    #[arg(long, default_value_t = 4096.0)]
    pub(crate) target_rss_bytes_per_conn: f64,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[arg(long, default_value_t = 1)]
    pub(crate) rooms: usize,
    /// Viewers in all rooms together, spread evenly.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) viewers: usize,
    /// Gifts per second over all rooms.
    #[arg(long, default_value_t = 200.0)]
    pub(crate) gifts_per_sec: f64,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Gift senders per room (they are room members too, but not counted as viewers).
    #[arg(long, default_value_t = 1)]
    pub(crate) senders_per_room: usize,
    #[arg(long, default_value = "rose")]
    pub(crate) sticker: String,
    /// Gifts in flight per sender.
    #[arg(long, default_value_t = 16)]
    pub(crate) pipeline: usize,
    /// Time viewers get after the last gift to reach the final sequence number.
    #[arg(long, default_value_t = 15)]
    pub(crate) catch_up_secs: u64,
    /// Target: p99 of gift to last viewer.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) target_p99_ms: f64,
    /// Target: gift deliveries per second (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) target_deliveries_per_sec: f64,
    /// Each room's streamer keeps a goal of this many coins running (0: none), so gifts also
    /// move a goal: the room mechanics' cost on the fan-out.
    #[arg(long, default_value_t = 0)]
    pub(crate) goal_coins: u64,
    /// Rooms battle in pairs, one PK battle after another (an odd last room battles a rival
    /// room with no viewers), so gifts also score: the PK battles' cost on the fan-out.
    #[arg(long)]
    pub(crate) pk: bool,
    /// Before sending, wait up to this long for the room's published viewer count (the
    /// cluster's, as the streamer sees it) to reach --viewers; a shortfall is an integrity
    /// failure. 0: do not wait (workers' joins are acknowledged either way).
    #[arg(long, default_value_t = 0)]
    pub(crate) wait_viewer_count_secs: u64,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct AuditArgs {
    /// After the run, audit the ledger: `giftd audit --db` plus a check that every receipted
    /// gift id is in the ledger. Automatic paths with --spawn-server.
    #[arg(long)]
    pub(crate) audit: bool,
    /// Ledger file to audit (a server not spawned by giftd-load).
    #[arg(long, value_name = "PATH")]
    pub(crate) audit_db: Option<PathBuf>,
    /// giftd binary that runs the audit (a server not spawned by giftd-load).
    #[arg(long, value_name = "PATH")]
    pub(crate) giftd_bin: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct GiftsArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) audit: AuditArgs,
    #[arg(long, default_value_t = 64)]
    pub(crate) rooms: usize,
    #[arg(long, default_value_t = 4)]
    pub(crate) senders_per_room: usize,
    /// Gifts per second over all senders; 0 sends closed-loop as fast as acks come back.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) gifts_per_sec: f64,
    /// Gifts in flight per sender (giftd commits up to `server.gifts_in_flight_max` of one
    /// connection's gifts at once).
    #[arg(long, default_value_t = 2)]
    pub(crate) pipeline: usize,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Stop after this many gifts in all (0: no limit but the duration).
    #[arg(long, default_value_t = 0)]
    pub(crate) gifts_max: u64,
    #[arg(long, default_value = "rose")]
    pub(crate) sticker: String,
    #[arg(long, default_value_t = 50_000.0)]
    pub(crate) target_gifts_per_sec: f64,
    #[arg(long, default_value_t = 5.0)]
    pub(crate) target_p99_ms: f64,
}

#[derive(Args, Clone, Debug)]
pub(crate) struct MixedArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) audit: AuditArgs,
    #[arg(long, default_value_t = 10)]
    pub(crate) rooms: usize,
    /// Passive viewers over all rooms.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) viewers: usize,
    #[arg(long, default_value_t = 5)]
    pub(crate) senders_per_room: usize,
    /// Commands per second over all senders (60% gifts of three stickers, so gifts in a row of
    /// one sticker form combos; 10% paid questions, 10% questions, 10% balance, 10% ping).
    #[arg(long, default_value_t = 500.0)]
    pub(crate) commands_per_sec: f64,
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Streamers thank every n-th gift (0: never); they answer every question.
    #[arg(long, default_value_t = 5)]
    pub(crate) thank_every: u64,
    #[arg(long, default_value_t = 15)]
    pub(crate) catch_up_secs: u64,
    /// Each room's streamer keeps a goal of this many coins running (0: none).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) goal_coins: u64,
    /// Rooms battle in pairs, one PK battle after another (an odd last room battles a rival
    /// room with no viewers). `--pk false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) pk: bool,
}
