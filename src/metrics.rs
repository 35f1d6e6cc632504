//! Prometheus metrics, owned by one [`Metrics`] value registered once per server.
//!
//! Each server gets its own registry (not the global one), so tests running several servers in
//! one process see only their own numbers. Hot-path counters are resolved to their label values
//! once, here, so that the fan-out path touches an atomic and nothing else.
//!
//! [`METRIC_NAMES`] lists every exported family; the dashboard test checks Grafana's queries
//! against it.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::gift::split::Split;
use crate::gift::Channel;
use crate::ledger::pk::PkEndReason;
use crate::protocol::server::EventKind;

/// Every metric family giftd exports.
pub const METRIC_NAMES: &[&str] = &[
    "giftd_connections",
    "giftd_rooms",
    "giftd_connections_accepted_total",
    "giftd_connections_rejected_total",
    "giftd_connections_closed_total",
    "giftd_messages_in_total",
    "giftd_messages_out_total",
    "giftd_fanout_deliveries_total",
    "giftd_room_events_total",
    "giftd_slow_consumers_total",
    "giftd_close_resets_total",
    "giftd_errors_total",
    "giftd_gifts_total",
    "giftd_gift_coins_total",
    "giftd_topup_coins_total",
    "giftd_refunds_total",
    "giftd_refund_coins_total",
    "giftd_debt_repaid_coins_total",
    "giftd_red_packet_coins_total",
    "giftd_ledger_commit_seconds",
    "giftd_ack_seconds",
    "giftd_ledger_ready",
    "giftd_recoveries_total",
    "giftd_room_busy_total",
    "giftd_fanout_node_behind_total",
    "giftd_gifts_in_flight",
    "giftd_cluster_connected",
    "giftd_cluster_replicas",
    "giftd_cluster_remote_commands_total",
    "giftd_cluster_publish_queue_events",
    "giftd_cluster_publish_seconds",
    "giftd_cluster_publish_dropped_total",
    "giftd_cluster_resyncs_total",
    "giftd_cluster_leases_lost_total",
    "giftd_cluster_commands_fenced_total",
    "giftd_cluster_publish_revoked_total",
    "giftd_cluster_takeovers_total",
    "giftd_combos_total",
    "giftd_goals_total",
    "giftd_leaderboard_senders_untracked_total",
    "giftd_leaderboard_reads_total",
    "giftd_pk_ended_total",
];

/// Kinds of frames a connection writes, for `giftd_messages_out_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Welcome,
    Ack,
    Error,
    Event,
    Thanks,
    Answered,
    GiftReceived,
    Refund,
    RedPacketSummary,
}

impl OutKind {
    /// The kind a label names, for private frames relayed from another node.
    pub fn from_label(label: &str) -> Option<OutKind> {
        OutKind::ALL.into_iter().find(|k| k.label() == label)
    }

    const ALL: [OutKind; 9] = [
        OutKind::Welcome,
        OutKind::Ack,
        OutKind::Error,
        OutKind::Event,
        OutKind::Thanks,
        OutKind::Answered,
        OutKind::GiftReceived,
        OutKind::Refund,
        OutKind::RedPacketSummary,
    ];

    pub fn label(self) -> &'static str {
        match self {
            OutKind::Welcome => "welcome",
            OutKind::Ack => "ack",
            OutKind::Error => "error",
            OutKind::Event => "event",
            OutKind::Thanks => "thanks",
            OutKind::Answered => "answered",
            OutKind::GiftReceived => "gift_received",
            OutKind::Refund => "refund",
            OutKind::RedPacketSummary => "red_packet_summary",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub rooms: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_rejected: IntCounterVec,
    pub connections_closed: IntCounterVec,
    pub messages_in: IntCounterVec,
    messages_out: Vec<IntCounter>,
    pub fanout_deliveries: IntCounter,
    room_events: Vec<IntCounter>,
    pub slow_consumers: IntCounter,
    pub close_resets: IntCounter,
    /// `join`s with `since`: `[recovered, not recovered]`.
    recoveries: [IntCounter; 2],
    pub errors: IntCounterVec,
    pub gifts: IntCounter,
    gift_coins: IntCounterVec,
    pub topup_coins: IntCounterVec,
    refunds: IntCounterVec,
    refund_coins: IntCounterVec,
    pub debt_repaid_coins: IntCounterVec,
    pub red_packet_coins: IntCounterVec,
    pub ledger_commit_seconds: Histogram,
    pub ack_seconds: HistogramVec,
    pub ledger_ready: IntGauge,
    pub room_busy: IntCounter,
    pub fanout_node_behind: IntCounter,
    /// Gifts read from their connections and not yet answered (committing at the ledger, or
    /// forwarded to the room's node).
    pub gifts_in_flight: IntGauge,
    /// Rooms this node relays for another node (replicas).
    pub cluster_replicas: IntGauge,
    /// Commands forwarded to another node's room, and served for another node.
    pub cluster_remote_commands: IntCounterVec,
    /// Events waiting for NATS to accept them, summed over this node's rooms.
    pub cluster_publish_queue_events: IntGauge,
    pub cluster_publish_seconds: Histogram,
    /// Messages for NATS dropped because the publish queue was full or the publish failed.
    pub cluster_publish_dropped: IntCounter,
    /// Replica members sent away to re-join after events were lost on their way to this node.
    pub cluster_resyncs: IntCounter,
    /// Room leases this node lost to another node.
    pub cluster_leases_lost: IntCounter,
    /// Commands refused because this node's lease on their room was not confirmed in time.
    pub cluster_commands_fenced: IntCounter,
    /// Queued events of rooms this node lost, dropped instead of published.
    pub cluster_publish_revoked: IntCounter,
    /// Rooms this node took over from a node that died.
    pub cluster_takeovers: IntCounter,
    /// Gift combos (two or more gifts) that ended.
    pub combos: IntCounter,
    /// Goals that ended: `[reached, missed]`.
    goals: [IntCounter; 2],
    /// Gifts whose sender a full session or window board could not rank (once per board).
    pub leaderboard_senders_untracked: IntCounter,
    /// Reads of all-time leaderboards from the ledger: `[ok, failed]`.
    leaderboard_reads: [IntCounter; 2],
    /// `pk_ended` events published, by reason (in [`PkEndReason::ALL`] order).
    pk_ended: [IntCounter; 5],
    pub cluster_connected: IntGauge,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("gauge registers once");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("counter registers once");
            c
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter vec");
            registry
                .register(Box::new(c.clone()))
                .expect("counter vec registers once");
            c
        };
        let messages_out_vec = counter_vec(
            "giftd_messages_out_total",
            "Frames written to clients, by type.",
            &["type"],
        );
        let ledger_commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "giftd_ledger_commit_seconds",
                "Time to apply and commit one ledger batch.",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(ledger_commit_seconds.clone()))
            .expect("histogram registers once");
        let ack_seconds = HistogramVec::new(
            HistogramOpts::new(
                "giftd_ack_seconds",
                "Time from a command's arrival to its ack or error, by type.",
            )
            .buckets(latency_buckets()),
            &["type"],
        )
        .expect("valid histogram");
        registry
            .register(Box::new(ack_seconds.clone()))
            .expect("histogram registers once");
        let cluster_publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "giftd_cluster_publish_seconds",
                "Time from a room event's numbering to NATS JetStream accepting it.",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid histogram");
        registry
            .register(Box::new(cluster_publish_seconds.clone()))
            .expect("histogram registers once");

        Metrics {
            connections: gauge("giftd_connections", "Open WebSocket connections."),
            rooms: gauge("giftd_rooms", "Live rooms."),
            connections_accepted: counter(
                "giftd_connections_accepted_total",
                "WebSocket connections accepted.",
            ),
            connections_rejected: counter_vec(
                "giftd_connections_rejected_total",
                "Connections refused before or during the handshake, by reason.",
                &["reason"],
            ),
            connections_closed: counter_vec(
                "giftd_connections_closed_total",
                "WebSocket connections closed, by close reason.",
                &["reason"],
            ),
            messages_in: counter_vec(
                "giftd_messages_in_total",
                "Client messages received, by type.",
                &["type"],
            ),
            messages_out: OutKind::ALL
                .iter()
                .map(|k| messages_out_vec.with_label_values(&[k.label()]))
                .collect(),
            fanout_deliveries: counter(
                "giftd_fanout_deliveries_total",
                "Room event frames written to member sockets.",
            ),
            room_events: {
                let vec = counter_vec(
                    "giftd_room_events_total",
                    "Room events published, by kind.",
                    &["kind"],
                );
                EventKind::NAMES
                    .iter()
                    .map(|k| vec.with_label_values(&[k]))
                    .collect()
            },
            slow_consumers: counter(
                "giftd_slow_consumers_total",
                "Connections dropped because they fell too far behind.",
            ),
            recoveries: {
                let vec = counter_vec(
                    "giftd_recoveries_total",
                    "Joins that asked to recover missed events, by whether they could.",
                    &["recovered"],
                );
                [vec.with_label_values(&["true"]), vec.with_label_values(&["false"])]
            },
            close_resets: counter(
                "giftd_close_resets_total",
                "Connections reset because the client did not read its close frame within close_timeout_ms.",
            ),
            errors: counter_vec(
                "giftd_errors_total",
                "Error replies sent, by reason.",
                &["reason"],
            ),
            gifts: counter("giftd_gifts_total", "Gifts committed (replays excluded)."),
            gift_coins: counter_vec(
                "giftd_gift_coins_total",
                "Coins of committed gifts, by split party and source channel.",
                &["party", "channel"],
            ),
            topup_coins: counter_vec(
                "giftd_topup_coins_total",
                "Coins topped up, by channel.",
                &["channel"],
            ),
            refunds: counter_vec(
                "giftd_refunds_total",
                "Top-ups reversed, by purchase channel and reason (refund or chargeback).",
                &["channel", "reason"],
            ),
            refund_coins: counter_vec(
                "giftd_refund_coins_total",
                "Coins of reversed top-ups, by purchase channel, reason, and whether they left the wallet or became debt.",
                &["channel", "reason", "from"],
            ),
            debt_repaid_coins: counter_vec(
                "giftd_debt_repaid_coins_total",
                "Coins of top-ups that repaid a debt left by a refund, by channel.",
                &["channel"],
            ),
            red_packet_coins: counter_vec(
                "giftd_red_packet_coins_total",
                "Coins of red packets: dropped (left senders), grabbed (reached grabbers), returned (expired).",
                &["movement"],
            ),
            ledger_commit_seconds,
            ack_seconds,
            ledger_ready: gauge(
                "giftd_ledger_ready",
                "1 while the ledger's last write succeeded.",
            ),
            gifts_in_flight: gauge(
                "giftd_gifts_in_flight",
                "Gifts read from their connections and not yet answered (committing, or forwarded to the room's node).",
            ),
            room_busy: counter(
                "giftd_room_busy_total",
                "Commands refused with room_busy because a room's events were backed up.",
            ),
            fanout_node_behind: counter(
                "giftd_fanout_node_behind_total",
                "Writer batches that found the node rooms.busy_backlog_events behind a room while the member's socket took every write at once (the node, not the client, was slow); the room refuses commands meanwhile.",
            ),
            cluster_replicas: gauge(
                "giftd_cluster_replicas",
                "Rooms run by another node that this node relays to its members.",
            ),
            cluster_remote_commands: counter_vec(
                "giftd_cluster_remote_commands_total",
                "Commands forwarded to the node that runs the room (sent), and run for another node (served).",
                &["side"],
            ),
            cluster_publish_queue_events: gauge(
                "giftd_cluster_publish_queue_events",
                "Room events waiting for NATS to accept them.",
            ),
            cluster_publish_seconds,
            cluster_publish_dropped: counter(
                "giftd_cluster_publish_dropped_total",
                "Messages for NATS dropped: the publish queue was full or the publish failed.",
            ),
            cluster_resyncs: counter(
                "giftd_cluster_resyncs_total",
                "Members of a relayed room sent to re-join (close 4002) after this node missed events.",
            ),
            cluster_leases_lost: counter(
                "giftd_cluster_leases_lost_total",
                "Rooms this node stopped running because it could not renew their lease.",
            ),
            cluster_commands_fenced: counter(
                "giftd_cluster_commands_fenced_total",
                "Commands refused with room_unavailable because this node's lease on the room was not confirmed in time.",
            ),
            cluster_publish_revoked: counter(
                "giftd_cluster_publish_revoked_total",
                "Queued events of rooms this node lost to another node, dropped instead of published.",
            ),
            cluster_takeovers: counter(
                "giftd_cluster_takeovers_total",
                "Rooms this node took over because their node stopped renewing their lease.",
            ),
            combos: counter(
                "giftd_combos_total",
                "Gift combos (two or more gifts of one sticker from one sender) that ended.",
            ),
            goals: {
                let vec = counter_vec(
                    "giftd_goals_total",
                    "Room goals that ended, by whether they were reached.",
                    &["outcome"],
                );
                [vec.with_label_values(&["reached"]), vec.with_label_values(&["missed"])]
            },
            leaderboard_senders_untracked: counter(
                "giftd_leaderboard_senders_untracked_total",
                "Gifts whose sender a room's full session or window leaderboard could not rank, once per board (rooms.leaderboard_senders_max).",
            ),
            leaderboard_reads: {
                let vec = counter_vec(
                    "giftd_leaderboard_reads_total",
                    "Reads of all-time leaderboards from the ledger, by outcome.",
                    &["outcome"],
                );
                [vec.with_label_values(&["ok"]), vec.with_label_values(&["failed"])]
            },
            pk_ended: {
                let vec = counter_vec(
                    "giftd_pk_ended_total",
                    "PK battles and challenges that ended, once per room that published pk_ended (twice per battle), by reason.",
                    &["reason"],
                );
                PkEndReason::ALL.map(|r| vec.with_label_values(&[r.as_str()]))
            },
            cluster_connected: gauge(
                "giftd_cluster_connected",
                "1 while this node is connected to NATS (always 0 on a single node).",
            ),
            registry,
        }
    }

    /// Counts one published room event; resolved per kind once, since it runs under the room's lock.
    pub fn room_event(&self, kind: &EventKind) {
        self.room_events[kind.index()].inc();
    }

    /// Counts a read of an all-time leaderboard from the ledger.
    pub fn leaderboard_read(&self, ok: bool) {
        self.leaderboard_reads[usize::from(!ok)].inc();
    }

    /// Counts a `pk_ended` this node published.
    pub fn pk_ended(&self, reason: PkEndReason) {
        let i = PkEndReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("ALL lists every reason");
        self.pk_ended[i].inc();
    }

    /// Counts a goal that ended, reached or not.
    pub fn goal_ended(&self, reached: bool) {
        self.goals[usize::from(!reached)].inc();
    }

    /// Counts a `join` with `since`, recovered or not.
    pub fn recovery(&self, recovered: bool) {
        self.recoveries[usize::from(!recovered)].inc();
    }

    pub fn out(&self, kind: OutKind, n: u64) {
        self.messages_out[kind as usize].inc_by(n);
    }

    /// Counts a committed gift's coins by party and channel.
    pub fn record_split(&self, split: &Split) {
        self.gifts.inc();
        for ch in Channel::ALL {
            let i = ch.index();
            for (party, coins) in [
                ("store", split.store_by_channel[i]),
                ("streamer", split.streamer_by_channel[i]),
                ("platform", split.platform_by_channel[i]),
            ] {
                if coins > 0 {
                    self.gift_coins
                        .with_label_values(&[party, ch.as_str()])
                        .inc_by(coins);
                }
            }
        }
    }

    /// Counts a committed (not replayed) reversal of a top-up.
    pub fn record_refund(&self, r: &crate::ledger::RefundReceipt) {
        let (channel, reason) = (r.channel.as_str(), r.reason.as_str());
        self.refunds.with_label_values(&[channel, reason]).inc();
        for (from, coins) in [("wallet", r.wallet_coins), ("debt", r.debt_coins)] {
            self.refund_coins
                .with_label_values(&[channel, reason, from])
                .inc_by(coins);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_family_is_exported() {
        let m = Metrics::new();
        // Touch the vectors so each family has a sample to print.
        m.connections_rejected.with_label_values(&["x"]).inc();
        m.connections_closed.with_label_values(&["x"]).inc();
        m.messages_in.with_label_values(&["x"]).inc();
        m.room_event(&EventKind::Viewers { count: 1 });
        m.errors.with_label_values(&["x"]).inc();
        m.topup_coins.with_label_values(&["web"]).inc();
        m.debt_repaid_coins.with_label_values(&["web"]).inc();
        m.red_packet_coins.with_label_values(&["dropped"]).inc();
        m.refunds.with_label_values(&["web", "refund"]).inc();
        m.refund_coins
            .with_label_values(&["web", "refund", "debt"])
            .inc();
        m.ack_seconds.with_label_values(&["x"]).observe(0.1);
        m.cluster_remote_commands.with_label_values(&["sent"]).inc();
        m.record_split(&crate::gift::split::split(
            [10, 0, 0],
            crate::config::SplitConfig::default().store_fee_bps,
            5000,
        ));
        let text = m.render();
        for name in METRIC_NAMES {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
