//! Typed configuration: TOML file, `GIFTD_` environment overrides, documented defaults, and one
//! validation pass at start.
//!
//! Every field has a default that runs out of the box on 127.0.0.1, so `giftd serve` needs no
//! file. Every bound carries its unit in its name. [`Config::validate`] returns every problem at
//! once, so `giftd check-config` can print them all rather than the first.
//!
//! Environment overrides use `GIFTD_<SECTION>__<FIELD>`, for example
//! `GIFTD_SERVER__LISTEN=0.0.0.0:8080` or `GIFTD_LEDGER__PATH=/data/giftd.db`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::gift::catalog::Sticker;
use crate::gift::Channel;
/// Store fees are money rules (`gift.rs`); the config only chooses their values.
pub use crate::gift::StoreFees;

/// The secrets that ship as defaults. They are fine on loopback and refused anywhere else.
pub const DEV_JWT_SECRET: &str = "giftd-dev-jwt-secret-change-me";
pub const DEV_ADMIN_TOKEN: &str = "giftd-dev-admin-token";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub rooms: RoomsConfig,
    pub ledger: LedgerConfig,
    pub cluster: ClusterConfig,
    pub split: SplitConfig,
    pub spending: SpendingConfig,
    pub red_packets: RedPacketsConfig,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub demo: DemoConfig,
    /// The sticker catalog. Empty means the built-in catalog.
    pub stickers: Vec<Sticker>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public address for client WebSockets (`/ws`) and the public HTTP endpoints (`/rooms`,
    /// `/stickers`).
    pub listen: SocketAddr,
    /// Operator address for `/metrics`, `/healthz`, `/readyz` and `/admin/*`, on its own
    /// listener so that clients on the public port can never starve them. Loopback by default;
    /// must differ from `listen`.
    pub admin_listen: SocketAddr,
    /// Open TCP connections on the admin listener at once; the rest are refused. At least 1.
    pub admin_connections_max: usize,
    /// Time allowed for in-flight work after SIGTERM/SIGINT before giftd exits anyway.
    pub shutdown_grace_ms: u64,
    /// Open WebSockets at once; beyond it upgrades get HTTP 503. At least 1.
    pub connections_max: usize,
    /// Time a client has to finish the HTTP upgrade and authenticate. At least 100.
    pub handshake_timeout_ms: u64,
    /// Allowed `Origin` header values for WebSocket upgrades, each `http://…` or `https://…`.
    /// Empty allows all.
    pub origins_allowed: Vec<String>,
    /// Largest WebSocket message (and frame) accepted, in bytes. 256 to 16777216.
    pub message_bytes_max: usize,
    /// Private frames (acks, receipts, thank-yous) queued per connection before it is dropped as
    /// a slow consumer. At least 8.
    pub outbox_frames_max: usize,
    /// `send_gift` commands of one connection committing at once; their acks come in any order
    /// (`docs/PROTOCOL.md` §2). 1 runs every command in the order sent. 1 to 256.
    pub gifts_in_flight_max: usize,
    /// Bytes of private frames queued per connection before it is dropped as a slow consumer
    /// (one frame is always accepted into an empty queue). At least 4096.
    pub outbox_bytes_max: usize,
    /// Initial WebSocket read buffer per connection; it grows only while a large message arrives.
    /// At least 64.
    pub ws_read_buffer_bytes: usize,
    /// Bytes of frames a connection's writer queues before it writes them to the socket and
    /// queues more (`websocket.rs`). At least 1024.
    pub ws_write_buffer_bytes: usize,
    /// Kernel send buffer of each client socket (`SO_SNDBUF`), in bytes: what the kernel may hold
    /// for a client that stopped reading before giftd's writer stalls. 4096 to 16777216.
    pub socket_send_buffer_bytes: usize,
    /// Idle seconds before the kernel probes a silent client connection (TCP keepalive); a peer
    /// that vanished without closing is then reset after about 30 s more. 0 turns it off;
    /// otherwise 10 to 7200.
    pub tcp_keepalive_secs: u64,
    /// Average bytes per second read from one WebSocket; reads beyond it wait. Bounds the work
    /// any one client can cause, whatever its framing (floods of pings or empty fragments).
    /// At least 1024.
    pub inbound_bytes_per_sec: u64,
    /// Bytes one WebSocket may send in a burst above that rate. At least `message_bytes_max`.
    pub inbound_burst_bytes: u64,
    /// A write to a client that makes no progress for this long drops it as a slow consumer.
    /// At least 100.
    pub write_timeout_ms: u64,
    /// Time a closing connection's client has to read the rest of the frame in progress and the
    /// close frame; after it the socket is reset. At least 100.
    pub close_timeout_ms: u64,
    /// Protocol errors (bad JSON, unknown types...) tolerated per connection; the next one closes
    /// it with 4503.
    pub protocol_errors_max: u32,
    /// Serve `/echo`, a plain WebSocket echo with the production WebSocket limits, for
    /// conformance testing. Off in production.
    pub echo_endpoint: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            admin_listen: "127.0.0.1:9090".parse().expect("valid default address"),
            admin_connections_max: 64,
            shutdown_grace_ms: 10_000,
            connections_max: 19_000,
            handshake_timeout_ms: 5_000,
            origins_allowed: Vec::new(),
            message_bytes_max: 16 * 1024,
            outbox_frames_max: 256,
            gifts_in_flight_max: 16,
            outbox_bytes_max: 1 << 20,
            ws_read_buffer_bytes: 128,
            ws_write_buffer_bytes: 16 * 1024,
            socket_send_buffer_bytes: 64 * 1024,
            tcp_keepalive_secs: 60,
            inbound_bytes_per_sec: 64 * 1024,
            inbound_burst_bytes: 256 * 1024,
            write_timeout_ms: 5_000,
            close_timeout_ms: 5_000,
            protocol_errors_max: 20,
            echo_endpoint: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret for client tokens. The default is refused on non-loopback addresses.
    pub jwt_secret: String,
    /// Required `aud` claim.
    pub jwt_audience: String,
    /// Bearer token for the admin HTTP endpoints. The default is refused on non-loopback addresses.
    pub admin_token: String,
    /// Lifetime of tokens minted by `giftd token`.
    pub token_ttl_secs: u64,
    /// Clock skew tolerated when checking `exp`.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: DEV_JWT_SECRET.to_owned(),
            jwt_audience: "giftd".to_owned(),
            admin_token: DEV_ADMIN_TOKEN.to_owned(),
            token_ttl_secs: 3600,
            leeway_secs: 5,
        }
    }
}

/// One step of the paid-question pin ladder: a question paid with at least `price_coins_min`
/// stays pinned for `pinned_secs`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PinTier {
    pub price_coins_min: u64,
    pub pinned_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Viewer counts are published at most this often per room.
    pub viewer_count_interval_ms: u64,
    /// Room events buffered for viewers; a viewer further behind is dropped as slow.
    pub room_ring_frames: usize,
    /// When a room's members on this node are this many events behind on average (the node
    /// cannot keep up with the room), the room refuses new commands with `room_busy` until they
    /// catch up, so members reading at full speed are never dropped as slow. Above half of
    /// `room_ring_frames` and below it: one client that stopped reading adds at most a ring over
    /// the member count to the mean, so it is dropped as slow before it alone can make a room of
    /// two or more members busy.
    pub busy_backlog_events: usize,
    /// A room whose streamer has had no connection in it for this long is closed.
    pub streamer_away_close_ms: u64,
    /// Members (streamer and viewer connections) per room.
    pub members_max: usize,
    /// Live rooms per node.
    pub rooms_max: usize,
    pub title_chars_max: usize,
    pub question_chars_max: usize,
    pub answer_chars_max: usize,
    pub thanks_chars_max: usize,
    /// Unanswered questions kept per room; the oldest unpinned one is dropped beyond this.
    pub questions_open_max: usize,
    /// Gifts remembered per room so the streamer can thank them.
    pub recent_gifts_max: usize,
    /// Events a room keeps for members that reconnect and `join` with `since`. 0 turns recovery
    /// off. At most 1048576.
    pub history_events_max: usize,
    /// Age after which a kept event no longer counts for recovery. At least 1000.
    pub history_age_ms: u64,
    /// Template for automatic thank-yous, sent for each gift at once. `{sender}` and
    /// `{sticker}` are replaced. Empty disables it.
    pub auto_thanks: String,
    /// Pin time by price for paid questions, ascending by price.
    pub pin_tiers: Vec<PinTier>,
    /// Gifts of one sticker from one sender at most this far apart form a combo, which ends
    /// when this long passes with no such gift. 100 to 60000.
    pub combo_window_ms: u64,
    /// Senders whose combo (or lone recent gift) a room tracks at once; beyond it, the one with
    /// the oldest last gift ends at once. At least 1.
    pub combos_open_max: usize,
    /// Longest `duration_ms` a goal may be given, in ms. At least 1000.
    pub goal_duration_ms_max: u64,
    /// Largest `target_coins` a goal may be given. At least 1.
    pub goal_target_coins_max: u64,
    /// Gifters each leaderboard shows in the join snapshot, its events and the `leaderboard`
    /// command. 1 to 100.
    pub leaderboard_top_n: usize,
    /// The rolling window of the `window` board, in ms, counted in 60 steps. 60000 to 604800000.
    pub leaderboard_window_ms: u64,
    /// Senders the `session` and `window` boards each track per room; once full, new senders are
    /// not ranked on them (the `all_time` board, read from the ledger, has no limit). At least 1.
    pub leaderboard_senders_max: usize,
    /// Entries on each side of the user that `leaderboard` with `around` returns. 0 to 50.
    pub leaderboard_neighbours: usize,
    /// A room reads its all-time board from the ledger at most this often, in ms, and only after
    /// gifts. 500 to 3600000.
    pub leaderboard_all_time_interval_ms: u64,
    /// How long a PK challenge waits for the other streamer's answer, in ms. 1000 to 600000.
    pub pk_answer_ms: u64,
    /// How long a PK battle runs once accepted, in ms. 1000 to 3600000.
    pub pk_duration_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            viewer_count_interval_ms: 500,
            room_ring_frames: 1024,
            busy_backlog_events: 640,
            streamer_away_close_ms: 300_000,
            members_max: 50_000,
            rooms_max: 10_000,
            title_chars_max: 120,
            question_chars_max: 300,
            answer_chars_max: 1000,
            thanks_chars_max: 200,
            questions_open_max: 200,
            recent_gifts_max: 4096,
            history_events_max: 1000,
            history_age_ms: 300_000,
            auto_thanks: String::new(),
            pin_tiers: vec![
                PinTier {
                    price_coins_min: 100,
                    pinned_secs: 60,
                },
                PinTier {
                    price_coins_min: 500,
                    pinned_secs: 120,
                },
                PinTier {
                    price_coins_min: 1_000,
                    pinned_secs: 300,
                },
                PinTier {
                    price_coins_min: 2_000,
                    pinned_secs: 600,
                },
                PinTier {
                    price_coins_min: 5_000,
                    pinned_secs: 1_800,
                },
                PinTier {
                    price_coins_min: 10_000,
                    pinned_secs: 3_600,
                },
                PinTier {
                    price_coins_min: 50_000,
                    pinned_secs: 18_000,
                },
            ],
            combo_window_ms: 3_000,
            combos_open_max: 1_000,
            goal_duration_ms_max: 86_400_000,
            goal_target_coins_max: 1_000_000_000,
            leaderboard_top_n: 10,
            leaderboard_window_ms: 3_600_000,
            leaderboard_senders_max: 50_000,
            leaderboard_neighbours: 2,
            leaderboard_all_time_interval_ms: 5_000,
            pk_answer_ms: 30_000,
            pk_duration_ms: 300_000,
        }
    }
}

/// Where the ledger lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LedgerBackend {
    /// An embedded SQLite file (`ledger.path`): one node.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`ledger.postgres_url`) that several nodes share.
    Postgres,
}

/// Several nodes serving the same rooms over NATS (`cluster.rs`). Off unless `nats_url` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server with JetStream, e.g. `nats://127.0.0.1:4222`. Empty: a single node, no NATS.
    pub nats_url: String,
    /// This node's name in the cluster, `[A-Za-z0-9_-]`, unique per process. Empty: a random one.
    pub node_id: String,
    /// First token of every NATS subject, stream and bucket giftd uses, `[A-Za-z0-9_-]`. Nodes of
    /// one cluster share it; two clusters on one NATS (or parallel tests) use different ones.
    pub namespace: String,
    /// How long a room's ownership lasts unless its node renews it (a third of this, each
    /// time). A node that dies holds its rooms this long at most. 300 to 60000.
    pub lease_ms: u64,
    /// Events a room may have waiting for NATS to accept them. Beyond three quarters of it the
    /// room refuses new commands with `room_busy` (nothing charged) until NATS catches up.
    pub publish_queue_events: usize,
    /// Deadline of a command forwarded to the room's owner node. 100 to 60000.
    pub request_timeout_ms: u64,
    /// Forwarded commands one node runs at once for rooms it owns; more wait.
    pub remote_commands_max: usize,
    /// How long NATS keeps a room's latest events (at most `rooms.history_events_max` per room),
    /// from which a node that takes over a room whose owner died restores it. A room idle for
    /// longer than this cannot be taken over. 1000 to 604800000 (a week).
    pub events_kept_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: String::new(),
            node_id: String::new(),
            namespace: "giftd".into(),
            lease_ms: 3_000,
            publish_queue_events: 4_096,
            request_timeout_ms: 5_000,
            remote_commands_max: 1_024,
            events_kept_ms: 3_600_000,
        }
    }
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        !self.nats_url.is_empty()
    }

    fn check(&self, ledger: &LedgerConfig, c: &mut Checks) {
        let token = |s: &str| {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        c.need(!self.namespace.is_empty() && token(&self.namespace), || {
            "cluster.namespace must match [A-Za-z0-9_-]{1,64}".into()
        });
        c.need(token(&self.node_id), || {
            "cluster.node_id must match [A-Za-z0-9_-]{0,64}".into()
        });
        c.between("cluster.lease_ms", self.lease_ms, 300, 60_000);
        c.at_least("cluster.publish_queue_events", self.publish_queue_events, 4);
        c.between(
            "cluster.request_timeout_ms",
            self.request_timeout_ms,
            100,
            60_000,
        );
        c.at_least("cluster.remote_commands_max", self.remote_commands_max, 1);
        c.between(
            "cluster.events_kept_ms",
            self.events_kept_ms,
            1_000,
            604_800_000,
        );
        // Nodes with ledgers of their own would each accept the same idempotency key once.
        c.need(
            !self.enabled() || ledger.backend == LedgerBackend::Postgres,
            || {
                "cluster.nats_url needs ledger.backend = \"postgres\" (one ledger for all nodes)"
                    .into()
            },
        );
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `sqlite` or `postgres`.
    pub backend: LedgerBackend,
    /// SQLite database file. Created if missing.
    pub path: PathBuf,
    /// PostgreSQL connection, as a URL (`postgres://user@host:5432/db?options=-csearch_path%3Dgiftd`)
    /// or `key=value` pairs. The schema is the first on the search path; migrations run at start.
    pub postgres_url: String,
    /// Connections to PostgreSQL per node: the writers' and concurrent balance reads. More than
    /// `postgres_writers`.
    pub postgres_pool_max: usize,
    /// Writer tasks per node, each group-committing its own batches on its own connection, so
    /// one batch is decided while another commits. A user's requests always go to the same
    /// writer. 1 to 16.
    pub postgres_writers: usize,
    /// Requests folded into one group commit at most.
    pub batch_max: usize,
    /// Requests waiting for the ledger writer (the PostgreSQL writers share it); beyond this,
    /// callers wait.
    pub queue_max: usize,
    /// Deadline of every ledger call. A write not started by then is dropped and its caller told
    /// `ledger_unavailable` (nothing charged); one already started is answered by its commit.
    /// 10 to 600000.
    pub call_timeout_ms: u64,
    /// Free space the SQLite ledger's file system must keep, in bytes. Below it the node reports
    /// itself unready (`/readyz` 503) before gifts start failing for want of space. 0 disables
    /// the check; it does not apply to the PostgreSQL backend.
    pub disk_reserve_bytes: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            backend: LedgerBackend::Sqlite,
            path: PathBuf::from("giftd.db"),
            postgres_url: "postgres://postgres@127.0.0.1:5432/giftd".to_owned(),
            postgres_pool_max: 8,
            postgres_writers: 2,
            batch_max: 1024,
            queue_max: 16_384,
            call_timeout_ms: 5_000,
            disk_reserve_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Store fee per purchase channel, in basis points (1/100 of a percent).
    pub store_fee_bps: StoreFees,
    /// Streamer's share of what remains after the store fee, in basis points.
    pub streamer_share_bps_default: u32,
    /// Per-streamer overrides of the share, by user id.
    pub streamer_share_bps: BTreeMap<String, u32>,
    /// The order in which a wallet's per-channel coins are spent. Must list each channel once.
    pub spend_order: Vec<Channel>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            store_fee_bps: StoreFees {
                ios: 3000,
                android: 3000,
                web: 0,
            },
            streamer_share_bps_default: 5000,
            streamer_share_bps: BTreeMap::new(),
            spend_order: vec![Channel::Web, Channel::Android, Channel::Ios],
        }
    }
}

/// Per-user spending caps: coins a user may spend on gifts in a rolling window. The admin API
/// overrides the cap per user and flags minors (`PUT /admin/users/{user}/limits`); the ledger
/// checks the cap in the same transaction as the debit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpendingConfig {
    /// Length of the rolling window, in ms (a day by default). 1000 to 2592000000 (30 days).
    pub window_ms: u64,
    /// Coins a user may spend in one window unless the admin API sets their own cap.
    pub window_coins_max: u64,
    /// Coins a user flagged as a minor may spend in one window; 0 forbids spending. It bounds a
    /// minor's own cap too (the lower of the two applies).
    pub minor_window_coins_max: u64,
}

impl Default for SpendingConfig {
    fn default() -> Self {
        SpendingConfig {
            window_ms: 86_400_000,
            window_coins_max: 1_000_000,
            minor_window_coins_max: 5_000,
        }
    }
}

/// Red packets dropped into rooms (`drop_red_packet`, `grab_red_packet`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedPacketsConfig {
    /// How long a packet can be grabbed, in ms; then what is left returns to its sender.
    /// 1000 to 604800000 (7 days).
    pub expiry_ms: u64,
    /// How often each node looks for expired packets, in ms. 100 to 60000.
    pub sweep_interval_ms: u64,
    /// Shares in one packet at most. 1 to 10000.
    pub shares_max: u64,
    /// Coins in one packet at most. 1 to 1,000,000,000.
    pub total_coins_max: u64,
}

impl Default for RedPacketsConfig {
    fn default() -> Self {
        RedPacketsConfig {
            expiry_ms: 86_400_000,
            sweep_interval_ms: 1_000,
            shares_max: 200,
            total_coins_max: 1_000_000,
        }
    }
}

/// A token bucket: refills at `per_sec`, holds at most `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSet {
    pub gifts: Rate,
    pub questions: Rate,
    pub commands: Rate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Buckets for each connection.
    pub connection: RateSet,
    /// Buckets shared by all connections of one user on this node.
    pub user: RateSet,
}

impl Default for RateSet {
    fn default() -> Self {
        RateSet {
            gifts: Rate {
                per_sec: 20.0,
                burst: 40,
            },
            questions: Rate {
                per_sec: 1.0,
                burst: 5,
            },
            commands: Rate {
                per_sec: 50.0,
                burst: 100,
            },
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let user = RateSet {
            gifts: Rate {
                per_sec: 40.0,
                burst: 80,
            },
            questions: Rate {
                per_sec: 2.0,
                burst: 10,
            },
            commands: Rate {
                per_sec: 100.0,
                burst: 200,
            },
        };
        LimitsConfig {
            connection: RateSet::default(),
            user,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

/// The demo room served at `/demo` (`demo.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Let the demo pages mint tokens and top up wallets (`/demo/dev/*`), behind the admin token
    /// and only for loopback peers. For development: needs `server.listen` on loopback.
    pub dev_tools: bool,
}

impl DemoConfig {
    fn check(&self, server: &ServerConfig, c: &mut Checks) {
        c.need(!self.dev_tools || server.listen.ip().is_loopback(), || {
            format!(
                "demo.dev_tools is for development and needs a loopback server.listen, not {}",
                server.listen
            )
        });
    }
}

impl Config {
    /// Loads defaults, then the file (if any), then `GIFTD_` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(vec![format!(
                    "config file {} does not exist",
                    path.display()
                )]));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `GIFTD_<SECTION>__<FIELD>` variables are configuration; other `GIFTD_*` variables
        // (a test's knobs, a wrapper script's) are none of the server's business.
        figment = figment.merge(
            Env::prefixed("GIFTD_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(|e| e.to_string()).collect()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text alone (no environment), for tests and fuzzing.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(|e| e.to_string()).collect()))?;
        config.validate()?;
        Ok(config)
    }

    /// The catalog in force: the configured stickers, or the built-in ones.
    pub fn catalog(&self) -> Vec<Sticker> {
        if self.stickers.is_empty() {
            crate::gift::catalog::builtin()
        } else {
            self.stickers.clone()
        }
    }

    /// Checks every rule and returns all violations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut checks = Checks::default();
        self.server.check(&mut checks);
        self.auth.check(&self.server, &mut checks);
        self.rooms.check(&mut checks);
        self.ledger.check(&mut checks);
        self.cluster.check(&self.ledger, &mut checks);
        self.split.check(&mut checks);
        self.spending.check(&mut checks);
        self.red_packets.check(&mut checks);
        self.limits.check(&mut checks);
        self.demo.check(&self.server, &mut checks);
        if let Err(e) = crate::gift::catalog::Catalog::new(self.catalog()) {
            checks.0.push(format!("stickers: {e}"));
        }
        if checks.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(checks.0))
        }
    }
}

/// The problems found so far.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn need(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    /// `section.name` must be at least `min`.
    fn at_least<T: PartialOrd + std::fmt::Display>(&mut self, name: &str, value: T, min: T) {
        self.need(value >= min, || format!("{name} must be at least {min}"));
    }

    /// `section.name` must be within `min..=max`.
    fn between<T: PartialOrd + std::fmt::Display>(&mut self, name: &str, value: T, min: T, max: T) {
        self.need(value >= min && value <= max, || {
            format!("{name} must be between {min} and {max}")
        });
    }
}

impl ServerConfig {
    fn check(&self, c: &mut Checks) {
        // Port 0 (an ephemeral port, as tests use) never collides.
        c.need(
            self.admin_listen != self.listen || self.listen.port() == 0,
            || "server.admin_listen must differ from server.listen".into(),
        );
        c.at_least(
            "server.admin_connections_max",
            self.admin_connections_max,
            1,
        );
        c.at_least("server.connections_max", self.connections_max, 1);
        c.at_least(
            "server.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100,
        );
        c.between(
            "server.message_bytes_max",
            self.message_bytes_max,
            256,
            16 << 20,
        );
        c.at_least("server.outbox_frames_max", self.outbox_frames_max, 8);
        c.between(
            "server.gifts_in_flight_max",
            self.gifts_in_flight_max,
            1,
            256,
        );
        c.at_least("server.outbox_bytes_max", self.outbox_bytes_max, 4096);
        c.at_least("server.ws_read_buffer_bytes", self.ws_read_buffer_bytes, 64);
        c.at_least(
            "server.ws_write_buffer_bytes",
            self.ws_write_buffer_bytes,
            1024,
        );
        c.between(
            "server.socket_send_buffer_bytes",
            self.socket_send_buffer_bytes,
            4096,
            16 << 20,
        );
        c.need(
            self.tcp_keepalive_secs == 0 || (10..=7200).contains(&self.tcp_keepalive_secs),
            || "server.tcp_keepalive_secs must be 0 (off) or between 10 and 7200".into(),
        );
        c.at_least(
            "server.inbound_bytes_per_sec",
            self.inbound_bytes_per_sec,
            1024,
        );
        c.need(
            self.inbound_burst_bytes >= self.message_bytes_max as u64,
            || {
                format!(
                    "server.inbound_burst_bytes must be at least server.message_bytes_max ({})",
                    self.message_bytes_max
                )
            },
        );
        c.at_least("server.write_timeout_ms", self.write_timeout_ms, 100);
        c.at_least("server.close_timeout_ms", self.close_timeout_ms, 100);
        for origin in &self.origins_allowed {
            c.need(
                origin.starts_with("http://") || origin.starts_with("https://"),
                || {
                    format!(
                        "server.origins_allowed entry `{origin}` must start with http:// or https://"
                    )
                },
            );
        }
    }

    /// How each accepted client socket is set up.
    pub fn socket_options(&self) -> crate::socket::SocketOptions {
        crate::socket::SocketOptions {
            send_buffer_bytes: self.socket_send_buffer_bytes,
            keepalive_idle: (self.tcp_keepalive_secs > 0)
                .then(|| std::time::Duration::from_secs(self.tcp_keepalive_secs)),
        }
    }

    /// Whether every address giftd listens on is loopback, where the development secrets are fine.
    fn loopback_only(&self) -> bool {
        self.listen.ip().is_loopback() && self.admin_listen.ip().is_loopback()
    }
}

impl AuthConfig {
    fn check(&self, server: &ServerConfig, c: &mut Checks) {
        c.need(self.jwt_secret.len() >= 16, || {
            "auth.jwt_secret must be at least 16 bytes".into()
        });
        c.need(self.admin_token.len() >= 16, || {
            "auth.admin_token must be at least 16 bytes".into()
        });
        c.need(!self.jwt_audience.is_empty(), || {
            "auth.jwt_audience must not be empty".into()
        });
        c.at_least("auth.token_ttl_secs", self.token_ttl_secs, 1);
        c.between("auth.leeway_secs", self.leeway_secs, 0, 300);
        if !server.loopback_only() {
            let listen = format!(
                "server.listen {} or server.admin_listen {} is not loopback",
                server.listen, server.admin_listen
            );
            c.need(self.jwt_secret != DEV_JWT_SECRET, || {
                format!("auth.jwt_secret is the development default but {listen}")
            });
            c.need(self.admin_token != DEV_ADMIN_TOKEN, || {
                format!("auth.admin_token is the development default but {listen}")
            });
        }
    }
}

impl RoomsConfig {
    fn check(&self, c: &mut Checks) {
        c.at_least(
            "rooms.viewer_count_interval_ms",
            self.viewer_count_interval_ms,
            50,
        );
        c.between("rooms.room_ring_frames", self.room_ring_frames, 16, 1 << 20);
        if self.room_ring_frames >= 16 {
            c.between(
                "rooms.busy_backlog_events",
                self.busy_backlog_events,
                self.room_ring_frames / 2 + 1,
                self.room_ring_frames - 1,
            );
        }
        c.at_least(
            "rooms.streamer_away_close_ms",
            self.streamer_away_close_ms,
            1000,
        );
        c.at_least("rooms.members_max", self.members_max, 1);
        c.at_least("rooms.rooms_max", self.rooms_max, 1);
        for (name, v) in [
            ("rooms.title_chars_max", self.title_chars_max),
            ("rooms.question_chars_max", self.question_chars_max),
            ("rooms.answer_chars_max", self.answer_chars_max),
            ("rooms.thanks_chars_max", self.thanks_chars_max),
            ("rooms.questions_open_max", self.questions_open_max),
            ("rooms.recent_gifts_max", self.recent_gifts_max),
        ] {
            c.at_least(name, v, 1);
        }
        c.between(
            "rooms.history_events_max",
            self.history_events_max,
            0,
            1 << 20,
        );
        c.at_least("rooms.history_age_ms", self.history_age_ms, 1000);
        c.between("rooms.combo_window_ms", self.combo_window_ms, 100, 60_000);
        c.at_least("rooms.combos_open_max", self.combos_open_max, 1);
        c.at_least(
            "rooms.goal_duration_ms_max",
            self.goal_duration_ms_max,
            1000,
        );
        c.at_least("rooms.goal_target_coins_max", self.goal_target_coins_max, 1);
        c.between("rooms.leaderboard_top_n", self.leaderboard_top_n, 1, 100);
        c.between(
            "rooms.leaderboard_window_ms",
            self.leaderboard_window_ms,
            60_000,
            604_800_000,
        );
        c.at_least(
            "rooms.leaderboard_senders_max",
            self.leaderboard_senders_max,
            1,
        );
        c.between(
            "rooms.leaderboard_all_time_interval_ms",
            self.leaderboard_all_time_interval_ms,
            500,
            3_600_000,
        );
        c.between("rooms.pk_answer_ms", self.pk_answer_ms, 1_000, 600_000);
        c.between(
            "rooms.pk_duration_ms",
            self.pk_duration_ms,
            1_000,
            3_600_000,
        );
        c.between(
            "rooms.leaderboard_neighbours",
            self.leaderboard_neighbours,
            0,
            50,
        );
        c.need(
            self.pin_tiers
                .windows(2)
                .all(|w| w[0].price_coins_min < w[1].price_coins_min),
            || "rooms.pin_tiers must be sorted by ascending price_coins_min".into(),
        );
        c.need(
            self.pin_tiers
                .iter()
                .all(|t| t.price_coins_min >= 1 && t.pinned_secs >= 1),
            || "rooms.pin_tiers entries need price_coins_min >= 1 and pinned_secs >= 1".into(),
        );
    }
}

impl LedgerConfig {
    fn check(&self, c: &mut Checks) {
        c.need(!self.path.as_os_str().is_empty(), || {
            "ledger.path must not be empty".into()
        });
        c.at_least("ledger.batch_max", self.batch_max, 1);
        c.at_least("ledger.queue_max", self.queue_max, 1);
        c.between("ledger.call_timeout_ms", self.call_timeout_ms, 10, 600_000);
        if self.backend == LedgerBackend::Postgres {
            c.between(
                "ledger.postgres_writers",
                self.postgres_writers,
                1,
                crate::ledger::postgres::WRITERS_MAX,
            );
            c.need(self.postgres_pool_max > self.postgres_writers, || {
                format!(
                    "ledger.postgres_pool_max ({}) must be more than ledger.postgres_writers ({}): \
                     reads need a connection beside the writers'",
                    self.postgres_pool_max, self.postgres_writers
                )
            });
            if let Err(e) = self.postgres_url.parse::<tokio_postgres::Config>() {
                c.0.push(format!("ledger.postgres_url is not a PostgreSQL URL: {e}"));
            }
        }
    }
}

impl SplitConfig {
    fn check(&self, c: &mut Checks) {
        for ch in Channel::ALL {
            c.need(self.store_fee_bps.bps(ch) <= 10_000, || {
                format!("split.store_fee_bps.{ch} must be at most 10000")
            });
        }
        c.need(self.streamer_share_bps_default <= 10_000, || {
            "split.streamer_share_bps_default must be at most 10000".into()
        });
        for (user, bps) in &self.streamer_share_bps {
            c.need(*bps <= 10_000, || {
                format!("split.streamer_share_bps.{user} must be at most 10000")
            });
        }
        let mut order = self.spend_order.clone();
        order.sort();
        order.dedup();
        c.need(
            order.len() == Channel::ALL.len() && self.spend_order.len() == Channel::ALL.len(),
            || "split.spend_order must list ios, android and web exactly once each".into(),
        );
    }
}

impl SpendingConfig {
    fn check(&self, c: &mut Checks) {
        c.between("spending.window_ms", self.window_ms, 1_000, 2_592_000_000);
        let max = crate::bounds::SPEND_CAP_COINS_MAX;
        c.between("spending.window_coins_max", self.window_coins_max, 0, max);
        c.between(
            "spending.minor_window_coins_max",
            self.minor_window_coins_max,
            0,
            max,
        );
    }
}

impl RedPacketsConfig {
    fn check(&self, c: &mut Checks) {
        c.between("red_packets.expiry_ms", self.expiry_ms, 1_000, 604_800_000);
        c.between(
            "red_packets.sweep_interval_ms",
            self.sweep_interval_ms,
            100,
            60_000,
        );
        c.between("red_packets.shares_max", self.shares_max, 1, 10_000);
        c.between(
            "red_packets.total_coins_max",
            self.total_coins_max,
            1,
            crate::bounds::TOPUP_COINS_MAX,
        );
    }
}

impl LimitsConfig {
    fn check(&self, c: &mut Checks) {
        for (level, set) in [("connection", &self.connection), ("user", &self.user)] {
            for (class, rate) in [
                ("gifts", set.gifts),
                ("questions", set.questions),
                ("commands", set.commands),
            ] {
                c.need(
                    rate.per_sec > 0.0 && rate.per_sec.is_finite() && rate.burst >= 1,
                    || format!("limits.{level}.{class} needs per_sec > 0 and burst >= 1"),
                );
            }
        }
    }
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "- {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Config::from_toml(
            r#"
            [server]
            listen = "0.0.0.0:8080"
            message_bytes_max = 10
            [split]
            spend_order = ["web", "web", "ios"]
            store_fee_bps = { ios = 20000, android = 3000, web = 0 }
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("message_bytes_max"), "{text}");
        assert!(
            text.contains("jwt_secret is the development default"),
            "{text}"
        );
        assert!(
            text.contains("admin_token is the development default"),
            "{text}"
        );
        assert!(text.contains("spend_order"), "{text}");
        assert!(text.contains("store_fee_bps.ios"), "{text}");
    }

    /// Every documented constraint is checked: each of these passes TOML parsing and must be
    /// refused by `validate`, naming the field.
    #[test]
    fn every_documented_constraint_is_checked() {
        let cases = [
            ("[server]\nadmin_listen = \"127.0.0.1:8080\"", "server.admin_listen"),
            ("[spending]\nwindow_ms = 999", "spending.window_ms"),
            ("[red_packets]\nexpiry_ms = 999", "red_packets.expiry_ms"),
            ("[red_packets]\nsweep_interval_ms = 99", "red_packets.sweep_interval_ms"),
            ("[red_packets]\nshares_max = 0", "red_packets.shares_max"),
            ("[red_packets]\ntotal_coins_max = 0", "red_packets.total_coins_max"),
            ("[spending]\nwindow_ms = 2592000001", "spending.window_ms"),
            ("[spending]\nwindow_coins_max = 1000000000001", "spending.window_coins_max"),
            ("[spending]\nminor_window_coins_max = 1000000000001", "spending.minor_window_coins_max"),
            ("[server]\nadmin_connections_max = 0", "server.admin_connections_max"),
            ("[server]\nconnections_max = 0", "server.connections_max"),
            ("[server]\nhandshake_timeout_ms = 99", "server.handshake_timeout_ms"),
            ("[server]\nmessage_bytes_max = 255", "server.message_bytes_max"),
            ("[server]\noutbox_frames_max = 7", "server.outbox_frames_max"),
            ("[server]\noutbox_bytes_max = 4095", "server.outbox_bytes_max"),
            ("[server]\nws_read_buffer_bytes = 63", "server.ws_read_buffer_bytes"),
            ("[server]\nws_write_buffer_bytes = 1023", "server.ws_write_buffer_bytes"),
            ("[server]\nsocket_send_buffer_bytes = 0", "server.socket_send_buffer_bytes"),
            ("[server]\ntcp_keepalive_secs = 5", "server.tcp_keepalive_secs"),
            ("[server]\ninbound_bytes_per_sec = 0", "server.inbound_bytes_per_sec"),
            ("[server]\ninbound_burst_bytes = 16383", "server.inbound_burst_bytes"),
            ("[server]\nwrite_timeout_ms = 0", "server.write_timeout_ms"),
            ("[server]\nclose_timeout_ms = 0", "server.close_timeout_ms"),
            ("[server]\norigins_allowed = [\"example.com\"]", "server.origins_allowed"),
            (
                "[server]\nadmin_listen = \"0.0.0.0:9090\"\n[auth]\nadmin_token = \"a-production-admin-token\"",
                "auth.jwt_secret is the development default",
            ),
            ("[auth]\njwt_secret = \"short\"", "auth.jwt_secret"),
            ("[auth]\nadmin_token = \"short\"", "auth.admin_token"),
            ("[auth]\njwt_audience = \"\"", "auth.jwt_audience"),
            ("[auth]\ntoken_ttl_secs = 0", "auth.token_ttl_secs"),
            ("[auth]\nleeway_secs = 301", "auth.leeway_secs"),
            ("[rooms]\nviewer_count_interval_ms = 49", "rooms.viewer_count_interval_ms"),
            ("[rooms]\nroom_ring_frames = 15", "rooms.room_ring_frames"),
            ("[rooms]\nbusy_backlog_events = 1024", "rooms.busy_backlog_events"),
            ("[rooms]\nbusy_backlog_events = 512", "rooms.busy_backlog_events"),
            ("[rooms]\nstreamer_away_close_ms = 999", "rooms.streamer_away_close_ms"),
            ("[rooms]\nmembers_max = 0", "rooms.members_max"),
            ("[rooms]\nrooms_max = 0", "rooms.rooms_max"),
            ("[rooms]\ntitle_chars_max = 0", "rooms.title_chars_max"),
            ("[rooms]\nquestion_chars_max = 0", "rooms.question_chars_max"),
            ("[rooms]\nanswer_chars_max = 0", "rooms.answer_chars_max"),
            ("[rooms]\nthanks_chars_max = 0", "rooms.thanks_chars_max"),
            ("[rooms]\nquestions_open_max = 0", "rooms.questions_open_max"),
            ("[rooms]\nrecent_gifts_max = 0", "rooms.recent_gifts_max"),
            ("[rooms]\nhistory_events_max = 1048577", "rooms.history_events_max"),
            ("[rooms]\nhistory_age_ms = 999", "rooms.history_age_ms"),
            (
                "[rooms]\npin_tiers = [{price_coins_min = 5, pinned_secs = 1}, {price_coins_min = 5, pinned_secs = 2}]",
                "rooms.pin_tiers must be sorted",
            ),
            ("[rooms]\npin_tiers = [{price_coins_min = 5, pinned_secs = 0}]", "pinned_secs >= 1"),
            ("[ledger]\npath = \"\"", "ledger.path"),
            ("[ledger]\nbatch_max = 0", "ledger.batch_max"),
            ("[ledger]\nqueue_max = 0", "ledger.queue_max"),
            (
                "[ledger]\nbackend = \"postgres\"\npostgres_writers = 0",
                "ledger.postgres_writers",
            ),
            (
                "[ledger]\nbackend = \"postgres\"\npostgres_writers = 8\npostgres_pool_max = 8",
                "ledger.postgres_pool_max (8) must be more than ledger.postgres_writers (8)",
            ),
            ("[split]\nstreamer_share_bps_default = 10001", "split.streamer_share_bps_default"),
            ("[split.streamer_share_bps]\nstar = 10001", "split.streamer_share_bps.star"),
            ("[limits.user.gifts]\nper_sec = 0.0\nburst = 1", "limits.user.gifts"),
            ("[limits.connection.commands]\nper_sec = 1.0\nburst = 0", "limits.connection.commands"),
            (
                "[server]\nlisten = \"0.0.0.0:8080\"\n[auth]\njwt_secret = \"a-production-jwt-secret\"\nadmin_token = \"a-production-admin-token\"\n[demo]\ndev_tools = true",
                "demo.dev_tools",
            ),
        ];
        for (toml, expected) in cases {
            let err = Config::from_toml(toml)
                .err()
                .unwrap_or_else(|| panic!("accepted: {toml}"));
            assert!(err.to_string().contains(expected), "{toml}: {err}");
            assert_eq!(
                err.0.len(),
                1,
                "{toml}: exactly one problem expected, got {err}"
            );
        }
    }

    #[test]
    fn ledger_backend_is_checked() {
        let err = Config::from_toml(
            "[ledger]\nbackend = \"postgres\"\npostgres_url = \"postgres://h:notaport/db\"\ncall_timeout_ms = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ledger.postgres_url"), "{err}");
        assert!(err.contains("ledger.call_timeout_ms"), "{err}");
        let err = Config::from_toml("[ledger]\nbackend = \"oracle\"\n").unwrap_err();
        assert!(err.to_string().contains("oracle"), "{err}");
        let ok = Config::from_toml(
            "[ledger]\nbackend = \"postgres\"\npostgres_url = \"postgres://postgres@127.0.0.1/test\"\n",
        )
        .unwrap();
        assert_eq!(ok.ledger.backend, LedgerBackend::Postgres);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Config::from_toml("[server]\nlisten_port = 3\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn stickers_replace_the_builtin_catalog() {
        let c =
            Config::from_toml("[[stickers]]\nid = \"star\"\nname = \"Star\"\nprice_coins = 7\n")
                .unwrap();
        assert_eq!(c.catalog().len(), 1);
        assert_eq!(c.catalog()[0].price_coins, 7);
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// `giftd.example.toml` documents every default; it must parse and say exactly what the code does.
    #[test]
    fn example_config_matches_the_defaults() {
        let text = include_str!("../giftd.example.toml");
        let parsed = Config::from_toml(text).expect("the example config validates");
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(&defaults).unwrap(),
            "giftd.example.toml drifted from Config::default()"
        );
    }
}
