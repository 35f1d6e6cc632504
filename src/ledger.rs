//! The ledger: the durable record of every coin, behind a small trait.
//!
//! The rest of giftd talks to [`Ledger`] only, so the embedded SQLite backend (`ledger/sqlite.rs`)
//! and the PostgreSQL one that several nodes share (`ledger/postgres.rs`) are interchangeable
//! without touching rooms or connections. Both store what the backend-neutral posting rules
//! (`ledger/posting.rs`) decide, and both bound every call by a deadline (`ledger/deadline.rs`).
//! The contract every backend keeps:
//!
//! - **Nothing is acknowledged before it is committed.** A method returns `Ok` only after the
//!   write is durable.
//! - **Double entry.** Every transaction posts entries that sum to zero. Viewer wallets, streamer
//!   earnings, the platform and the stores are accounts; money enters through one external account
//!   per store channel, so the sum of all balances is always zero.
//! - **No balance below zero** except the external accounts.
//! - **Idempotency.** A `(kind, actor, key)` is applied at most once, across all nodes. A repeat
//!   with the same payload returns the original receipt; a repeat with another payload is
//!   [`IdempotencyConflict`](crate::error::Error::IdempotencyConflict).
//! - **A refusal leaves nothing**, and a caller past its deadline gets `ledger_unavailable` with
//!   nothing charged.

pub mod audit;
pub mod deadline;
pub mod pk;
pub mod postgres;
pub mod posting;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::gift::split::Split;
use crate::gift::{Channel, ChannelCoins, StoreFees};

/// Red packets ended per [`Ledger::expire_packets`] call at most; a sweep calls again while
/// there are more.
pub const PACKETS_EXPIRED_PER_CALL_MAX: usize = 64;

/// Longest idempotency key or purchase id accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 128;

/// A confirmed store purchase that adds coins to a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpRequest {
    pub user: String,
    pub channel: Channel,
    pub coins: u64,
    /// The store's transaction id; the idempotency key of the top-up.
    pub purchase_id: String,
}

impl TopUpRequest {
    /// Digest of what the store confirmed. A replayed purchase id must carry the same digest.
    pub fn payload_digest(&self) -> String {
        format!("{}:{}:{}", self.user, self.channel, self.coins)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpReceipt {
    pub txn_id: u64,
    pub user: String,
    pub channel: Channel,
    pub coins: u64,
    pub purchase_id: String,
    /// Coins of this top-up that repaid the user's debt (left by a refund of coins already
    /// spent) before the rest reached the wallet.
    pub repaid_coins: u64,
    pub balance_coins: u64,
    /// True when this purchase id had already been applied and this is the original result.
    pub replayed: bool,
}

/// Why a store took a purchase back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    /// The store refunded the purchase (the user asked for it).
    Refund,
    /// The card issuer reversed the payment.
    Chargeback,
}

impl RefundReason {
    pub const ALL: [RefundReason; 2] = [RefundReason::Refund, RefundReason::Chargeback];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::Refund => "refund",
            RefundReason::Chargeback => "chargeback",
        }
    }

    pub fn parse(s: &str) -> Option<RefundReason> {
        RefundReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The reversal of a top-up, named by its store purchase id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// The purchase id of the top-up; the idempotency key of the reversal.
    pub purchase_id: String,
    pub reason: RefundReason,
    /// The order in which the user's other wallet channels are drawn once the purchase's own
    /// channel is empty (the configured spend order).
    pub spend_order: Vec<Channel>,
}

impl RefundRequest {
    /// A purchase is reversed once; a repeat for another reason is a conflict.
    pub fn payload_digest(&self) -> String {
        self.reason.as_str().to_owned()
    }
}

/// The committed record of a reversed top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundReceipt {
    pub txn_id: u64,
    pub purchase_id: String,
    pub reason: RefundReason,
    pub user: String,
    /// The channel the purchase was made through, which the coins go back out of.
    pub channel: Channel,
    /// The purchase's coins, all reversed.
    pub coins: u64,
    /// Coins taken back from the wallet.
    pub wallet_coins: u64,
    /// Coins already spent, now owed by the user: `coins - wallet_coins`.
    pub debt_coins: u64,
    /// The user's wallet right after the reversal.
    pub balance_coins: u64,
    /// Everything the user owes right after the reversal.
    pub owed_coins: u64,
    pub created_ms: u64,
    /// True when this purchase had already been reversed and this is the original result.
    pub replayed: bool,
}

/// A red packet dropped into a room: its coins leave the sender's wallet at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDrop {
    pub sender: String,
    pub room: String,
    pub total_coins: u64,
    pub shares: u64,
    /// The sender's idempotency key, in the same scope as gift keys' but its own kind.
    pub key: String,
    /// Until when (ms since the epoch) the packet can be grabbed; then the rest returns.
    pub expires_ms: u64,
    pub spend_order: Vec<Channel>,
    pub caps: CapPolicy,
}

impl PacketDrop {
    /// Digest of what the sender asked for. A retried key must carry the same digest.
    pub fn payload_digest(&self) -> String {
        format!("{}:{}:{}", self.room, self.total_coins, self.shares)
    }
}

/// The committed record of a dropped red packet, as the sender's ack shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketReceipt {
    pub packet_id: String,
    pub room: String,
    pub sender: String,
    pub total_coins: u64,
    pub shares: u64,
    /// Coins drawn from each channel of the sender's wallet: `[ios, android, web]`.
    pub funding_coins: ChannelCoins,
    /// The sender's balance right after the drop.
    pub balance_coins: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub replayed: bool,
}

/// A viewer (or the streamer) grabbing a share of a red packet in their room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketGrab {
    pub packet_id: String,
    pub user: String,
    /// The grabber's room: a packet is grabbed only in the room it was dropped into.
    pub room: String,
    pub now_ms: u64,
}

/// One grabbed share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrabReceipt {
    pub packet_id: String,
    pub user: String,
    /// Which share (0-based): the k-th grabber gets the k-th share of the recorded cut.
    pub share_index: u64,
    pub coins: u64,
    /// The channels the coins count as in the grabber's wallet, as the sender bought them.
    pub funding_coins: ChannelCoins,
    /// The grabber's balance right after.
    pub balance_coins: u64,
    /// Shares grabbed so far, this one included.
    pub grabbed_shares: u64,
    pub shares: u64,
    /// True when this user had grabbed the packet before and this is that grab.
    pub replayed: bool,
    /// Set when this grab took the last share: the packet's end.
    #[serde(skip)]
    pub end: Option<PacketEnd>,
}

/// Why a red packet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PacketEndReason {
    AllTaken,
    Expired,
}

/// A red packet that ended, with what became of its coins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PacketEnd {
    pub packet_id: String,
    pub room: String,
    pub sender: String,
    pub reason: PacketEndReason,
    pub total_coins: u64,
    pub shares: u64,
    pub grabbed_shares: u64,
    pub grabbed_coins: u64,
    /// Coins returned to the sender's wallet (expiry only).
    pub returned_coins: u64,
    /// Who grabbed how much, in share order.
    pub grabs: Vec<GrabView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrabView {
    pub user: String,
    pub coins: u64,
}

/// What a gift buys: a plain sticker or a paid question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiftPurpose {
    Sticker,
    Question { text: String },
}

/// How a gift's price is drawn and divided. The ledger's own type: the caller fills it from its
/// configuration, so the ledger depends on no config type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPolicy {
    pub store_fees: StoreFees,
    pub streamer_share_bps: u32,
    /// The order in which the sender's wallet channels are spent.
    pub spend_order: Vec<Channel>,
}

/// How a sender's spending is capped, from the configuration (`[spending]`). The ledger's own
/// type, like [`SplitPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapPolicy {
    /// Length of the rolling window, in ms.
    pub window_ms: u64,
    /// Coins per window for a user without their own cap.
    pub window_coins_max: u64,
    /// Coins per window for a minor; it also bounds a minor's own cap.
    pub minor_window_coins_max: u64,
}

/// A user's own spending limits, as the admin API set them (the defaults for a user it never
/// set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserLimits {
    /// The user's own cap per window, in coins; `None` means the configured default.
    pub window_coins_max: Option<u64>,
    /// A minor is capped at `spending.minor_window_coins_max` at most.
    pub minor: bool,
}

/// A user's spending in the current window, as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Spending {
    #[serde(flatten)]
    pub limits: UserLimits,
    /// The cap in force: the user's own or the default, bounded by the minor cap for a minor.
    pub cap_coins: u64,
    /// Coins spent on gifts within the last `window_ms`.
    pub spent_coins: u64,
    /// What the user may still spend now: `cap_coins - spent_coins`, or 0.
    pub remaining_coins: u64,
    pub window_ms: u64,
}

impl Spending {
    pub fn new(limits: UserLimits, policy: &CapPolicy, spent_coins: u64) -> Spending {
        let cap_coins = posting::cap_coins(policy, &limits);
        Spending {
            limits,
            cap_coins,
            spent_coins,
            remaining_coins: cap_coins.saturating_sub(spent_coins),
            window_ms: policy.window_ms,
        }
    }
}

/// Everything the ledger needs to apply one gift. The split and cap policies travel with the
/// request so the ledger stays free of config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftRequest {
    pub sender: String,
    pub streamer: String,
    pub room: String,
    pub sticker: String,
    pub price_coins: u64,
    pub idempotency_key: String,
    pub purpose: GiftPurpose,
    pub policy: SplitPolicy,
    pub caps: CapPolicy,
}

impl GiftRequest {
    /// Digest of what the sender asked for. A retried key must carry the same digest.
    pub fn payload_digest(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.room, &self.streamer, &self.sticker] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(self.price_coins.to_be_bytes());
        if let GiftPurpose::Question { text } = &self.purpose {
            h.update(b"question\0");
            h.update(text.as_bytes());
        }
        hex(&h.finalize())
    }
}

/// The committed record of a gift, as the sender's receipt shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GiftReceipt {
    pub gift_id: String,
    pub room: String,
    pub sender: String,
    pub streamer: String,
    pub sticker: String,
    pub price_coins: u64,
    pub store_coins: u64,
    pub streamer_coins: u64,
    pub platform_coins: u64,
    /// Coins drawn from each channel: `[ios, android, web]`.
    pub funding_coins: ChannelCoins,
    /// The sender's total balance right after this gift.
    pub balance_coins: u64,
    /// The room event sequence number of the gift, once published.
    pub seq: Option<u64>,
    pub created_ms: u64,
}

impl GiftReceipt {
    /// The receipt of a gift applied by `plan`.
    pub(crate) fn new(
        req: &GiftRequest,
        plan: &posting::GiftPlan,
        gift_id: String,
        created_ms: u64,
    ) -> GiftReceipt {
        GiftReceipt {
            gift_id,
            room: req.room.clone(),
            sender: req.sender.clone(),
            streamer: req.streamer.clone(),
            sticker: req.sticker.clone(),
            price_coins: req.price_coins,
            store_coins: plan.split.store_coins,
            streamer_coins: plan.split.streamer_coins,
            platform_coins: plan.split.platform_coins,
            funding_coins: plan.funding_coins,
            balance_coins: plan.balance_after_coins(),
            seq: None,
            created_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftOutcome {
    pub receipt: GiftReceipt,
    /// True when the key had been applied before and this is the original receipt.
    pub replayed: bool,
    /// The split by party and channel, for a gift applied by this call (not for a replay).
    pub split: Option<Split>,
}

/// A wallet's balance per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wallet {
    pub ios_coins: u64,
    pub android_coins: u64,
    pub web_coins: u64,
    /// What the user owes after a refund of coins already spent; later top-ups repay it first.
    pub owed_coins: u64,
}

impl Wallet {
    pub fn from_channels(c: ChannelCoins, owed_coins: u64) -> Wallet {
        Wallet {
            ios_coins: c[0],
            android_coins: c[1],
            web_coins: c[2],
            owed_coins,
        }
    }

    pub fn total_coins(&self) -> u64 {
        self.ios_coins + self.android_coins + self.web_coins
    }
}

/// A gifter's all-time coins to one streamer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gifter {
    pub user: String,
    pub coins: u64,
}

/// A user's place on a streamer's all-time board: `gifters` in board order, the first of them at
/// rank `first_rank` (1 = the top gifter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbourhood {
    pub first_rank: u64,
    pub gifters: Vec<Gifter>,
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Credits a wallet for a confirmed store purchase. Idempotent on `purchase_id`.
    async fn top_up(&self, req: TopUpRequest) -> Result<TopUpReceipt>;

    /// Reverses a top-up by its purchase id: the coins leave the wallet, and what was already
    /// spent becomes the user's debt (see `ledger/posting.rs`). Idempotent on `purchase_id`;
    /// [`crate::error::Error::PurchaseNotFound`] for a purchase the ledger never applied.
    async fn refund(&self, req: RefundRequest) -> Result<RefundReceipt>;

    /// Drops a red packet: the total leaves the sender's wallet for the packet's own account,
    /// and the cut into shares is drawn and recorded. Idempotent on `(sender, key)`; counts
    /// against the sender's spending cap.
    async fn drop_packet(&self, req: PacketDrop) -> Result<PacketReceipt>;

    /// Credits the next share of a red packet to the grabber. A user grabs a packet at most once
    /// (a unique key in the ledger, across nodes): a repeat returns the first grab, replayed.
    async fn grab_packet(&self, req: PacketGrab) -> Result<GrabReceipt>;

    /// Ends up to [`PACKETS_EXPIRED_PER_CALL_MAX`] packets whose time ran out before `now_ms`,
    /// returning what was not grabbed to their senders, each exactly once across nodes and
    /// restarts. Returns the packets this call ended.
    async fn expire_packets(&self, now_ms: u64) -> Result<Vec<PacketEnd>>;

    /// Debits the sender, splits the price, credits store, streamer and platform. Idempotent on
    /// `(sender, idempotency_key)`.
    async fn gift(&self, req: GiftRequest) -> Result<GiftOutcome>;

    /// Records the room sequence number a committed gift was published with, so that a replayed
    /// receipt carries it. Best effort and non-blocking: it rides along with the next group commit,
    /// and is dropped if the queue is full or the node crashes first (the replayed receipt then
    /// has no `seq`).
    fn note_gift_seq(&self, gift_id: &str, seq: u64);

    /// The user's wallet as committed.
    async fn wallet(&self, user: &str) -> Result<Wallet>;

    /// A streamer's committed earnings in coins.
    async fn earnings(&self, streamer: &str) -> Result<u64>;

    /// The top `limit` gifters of `streamer` by the coins of every gift made to them, in any
    /// room: more coins first, equal coins by user id in byte order. Read from `gifter_totals`,
    /// which the database keeps in each gift's own transaction.
    async fn top_gifters(&self, streamer: &str, limit: usize) -> Result<Vec<Gifter>>;

    /// `user` among `streamer`'s gifters, in the order of [`Ledger::top_gifters`], with up to
    /// `neighbours` gifters on each side; `None` if the user never gifted to the streamer.
    async fn gifter_around(
        &self,
        streamer: &str,
        user: &str,
        neighbours: usize,
    ) -> Result<Option<Neighbourhood>>;

    /// The coins gifted in `room` from `since_ms` on, per sender and per `step_ms` step of
    /// `created_ms`: `(sender, step start in ms, coins)`. Rebuilds a room's leaderboards after a
    /// takeover (`room/leaderboard.rs`).
    async fn room_gifts_since(
        &self,
        room: &str,
        since_ms: u64,
        step_ms: u64,
    ) -> Result<Vec<(String, u64, u64)>>;

    /// Records a PK challenge (`ledger/pk.rs`): a new `invited` battle that claims both rooms.
    /// [`crate::error::Error::PkBusy`] if either room is in an open battle; a battle of theirs
    /// whose clock ran out is ended first (by [`pk::PkBattle::apply`]'s rules).
    async fn pk_create(&self, challenge: pk::PkChallenge) -> Result<pk::PkBattle>;

    /// Applies `change` to the battle by [`pk::PkBattle::apply`]'s rules and returns it as
    /// committed; a clock that ran out is applied (and committed) even when the change itself is
    /// refused. [`crate::error::Error::PkNotFound`] for an unknown battle.
    async fn pk_change(&self, battle_id: &str, change: pk::PkChange) -> Result<pk::PkBattle>;

    /// The battle as committed, its scores included; `None` for an unknown battle.
    async fn pk_battle(&self, battle_id: &str) -> Result<Option<pk::PkBattle>>;

    /// Sets a user's own spending limits. Gifts decided after it returns use them, on every node.
    async fn set_limits(&self, user: &str, limits: UserLimits) -> Result<()>;

    /// The user's limits and what they spent within the window ending now, as committed.
    async fn spending(&self, user: &str, policy: CapPolicy) -> Result<Spending>;

    /// Makes a trivial durable write to learn whether storage works; updates [`Ledger::is_ready`].
    async fn probe(&self) -> Result<()>;

    /// Whether the last write succeeded; `/readyz` reports it.
    fn is_ready(&self) -> bool;

    /// Finishes every request already queued, commits, and stops. Later calls fail with
    /// [`crate::error::Error::ShuttingDown`].
    async fn close(&self);
}

/// Validates a top-up before it reaches a backend.
pub(crate) fn check_top_up(req: &TopUpRequest) -> Result<()> {
    if req.coins == 0 || req.coins > posting::TOP_UP_COINS_MAX {
        return Err(crate::error::Error::InvalidAmount(format!(
            "coins must be a whole number from 1 to {}",
            posting::TOP_UP_COINS_MAX
        )));
    }
    check_key(&req.purchase_id, "purchase_id")
}

/// Validates a client-chosen key: non-empty, bounded, printable ASCII.
pub fn check_key(key: &str, what: &str) -> Result<()> {
    let ok =
        !key.is_empty() && key.len() <= KEY_BYTES_MAX && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::InvalidMessage(format!(
            "{what} must be 1 to {KEY_BYTES_MAX} printable ASCII characters"
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// A new red packet id: `p`, the creation time in ms and 64 random bits, in hex.
pub(crate) fn new_packet_id(created_ms: u64) -> String {
    format!("p{created_ms:011x}{:016x}", rand::random::<u64>())
}

/// A new gift id: `g`, the creation time in ms and 64 random bits, in hex. Unique across nodes
/// and restarts without coordination (the ledgers also keep gift ids unique), and roughly
/// ordered by time.
pub(crate) fn new_gift_id(created_ms: u64) -> String {
    format!("g{created_ms:011x}{:016x}", rand::random::<u64>())
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
