//! The posting rules: the chart of accounts and the entries every kind of transaction posts.
//!
//! This is the ledger's money logic, free of any storage, so that each backend (SQLite,
//! PostgreSQL) applies the same rules rather than each writing its own. A backend reads the
//! balances a rule needs, asks this module for the entries, and writes them; it decides nothing
//! about who is owed what.
//!
//! # Chart of accounts
//! | account | what it holds | may be negative |
//! |---------|---------------|-----------------|
//! | `wallet:<user>:<channel>` | a viewer's coins bought through one store channel | no |
//! | `streamer:<user>` | a streamer's earnings | no |
//! | `store:<channel>` | the store fees owed to a channel | no |
//! | `platform` | the platform's revenue | no |
//! | `external:<channel>` | money that entered through a channel (minus all top-ups) | yes |
//! | `receivable:<user>` | minus what the user owes after a refund of coins already spent | only ≤ 0 |
//! | `packet:<packet_id>:<channel>` | a red packet's coins not yet grabbed or returned | no |
//!
//! Money enters only through the external accounts, so all balances always sum to zero.
//!
//! # Refunds and chargebacks
//! A reversed top-up sends its coins back out through its channel's external account. They are
//! taken from the wallet, the purchase's channel first and then the others in the spend order;
//! whatever the user already spent becomes debt, a negative balance on `receivable:<user>` (an
//! asset of the platform, so the only internal account below zero, and never above it). Gifts
//! paid with those coins stay settled: the streamer, store and platform keep their shares. Later
//! top-ups repay the debt first and only the rest reaches the wallet. A user in debt thus holds
//! no coins (the refund emptied the wallet first), and every coin the user spends afterwards was
//! paid for. `docs/ARCHITECTURE.md` says why this policy rather than clawing gifts back.
//!
//! # Red packets
//! A drop moves the sender's coins into the packet's accounts, one per channel; each grab moves
//! its recorded share on to the grabber's wallet, drawn from the packet's channels in
//! [`GRAB_ORDER`]; at expiry what is left goes back to the sender, channel by channel. Coins
//! therefore keep, through a red packet, the channel they were bought through.
//!
//! # Invariants
//! Checked with release-build `assert!`s, because a violation means a bug that must stop the
//! writer rather than commit wrong money: the entries of every transaction sum to zero; the
//! three shares of a gift sum to its price; a gift never draws more from a wallet channel than
//! it holds, so no internal balance goes negative (it is never clamped to zero either).
//!
//! # Hot accounts
//! Store, streamer, platform and external accounts are never read by a rule while a
//! transaction is being applied; only wallets are. Their changes may therefore be summed over a
//! batch ([`BatchSums`]) and written once per account per commit, or spread over several rows
//! that are summed on read, as the PostgreSQL backend does.

use std::collections::HashMap;

use super::{CapPolicy, GiftRequest, TopUpRequest, UserLimits};

use crate::error::{Error, Result};
use crate::gift::split::{draw, split, Split};
use crate::gift::{Channel, ChannelCoins};

/// The platform's revenue account.
pub const PLATFORM: &str = "platform";

/// At most: a debit and three credits per channel.
pub const ENTRIES_PER_TXN_MAX: usize = 12;

/// A sane bound on a refund's entries: the external account, three wallet channels, the debt.
const REFUND_ENTRIES_MAX: usize = 5;

/// Coins accepted in one top-up at most (the protocol's bound, `bounds.rs`): far below
/// `i64::MAX`, so sums of many stay exact.
pub const TOP_UP_COINS_MAX: u64 = crate::bounds::TOPUP_COINS_MAX;

/// The kinds of account, by what the rules allow on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Wallet,
    Streamer,
    Store,
    Platform,
    External,
    Receivable,
    Packet,
}

impl AccountKind {
    /// The kind of a well-formed account name.
    pub fn of(account: &str) -> Option<AccountKind> {
        let (prefix, rest) = account.split_once(':').unwrap_or((account, ""));
        match prefix {
            "wallet" => Some(AccountKind::Wallet),
            "streamer" if !rest.is_empty() => Some(AccountKind::Streamer),
            "store" => Channel::parse(rest).map(|_| AccountKind::Store),
            "platform" if rest.is_empty() => Some(AccountKind::Platform),
            "external" => Channel::parse(rest).map(|_| AccountKind::External),
            "receivable" if !rest.is_empty() => Some(AccountKind::Receivable),
            "packet" if !rest.is_empty() => Some(AccountKind::Packet),
            _ => None,
        }
    }

    /// Whether the account may hold a negative balance: only the external accounts do.
    pub fn is_external(self) -> bool {
        self == AccountKind::External
    }

    /// Whether the account may hold a negative balance (stored with the `external` flag, which
    /// lifts the non-negative constraint): the external accounts, and receivables, whose
    /// balance is minus a debt.
    pub fn may_go_negative(self) -> bool {
        matches!(self, AccountKind::External | AccountKind::Receivable)
    }

    /// Whether no rule reads this account while applying a transaction, so its changes may be
    /// summed over a batch (see the module doc).
    pub fn is_hot(self) -> bool {
        !matches!(
            self,
            AccountKind::Wallet | AccountKind::Receivable | AccountKind::Packet
        )
    }
}

pub fn wallet_account(user: &str, ch: Channel) -> String {
    format!("wallet:{user}:{ch}")
}

pub fn packet_account(packet_id: &str, ch: Channel) -> String {
    format!("packet:{packet_id}:{ch}")
}

pub fn receivable_account(user: &str) -> String {
    format!("receivable:{user}")
}

pub fn streamer_account(streamer: &str) -> String {
    format!("streamer:{streamer}")
}

pub fn store_account(ch: Channel) -> &'static str {
    match ch {
        Channel::Ios => "store:ios",
        Channel::Android => "store:android",
        Channel::Web => "store:web",
    }
}

pub fn external_account(ch: Channel) -> &'static str {
    match ch {
        Channel::Ios => "external:ios",
        Channel::Android => "external:android",
        Channel::Web => "external:web",
    }
}

/// One line of a transaction: signed coins on one account, attributed to a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account: String,
    pub amount_coins: i64,
    pub channel: Channel,
}

impl Entry {
    pub fn kind(&self) -> AccountKind {
        AccountKind::of(&self.account).expect("posting rules only name accounts of the chart")
    }
}

/// The entries of one transaction; they always sum to zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    entries: Vec<Entry>,
}

impl Posting {
    fn new(entries: Vec<Entry>) -> Posting {
        assert!(
            !entries.is_empty() && entries.len() <= ENTRIES_PER_TXN_MAX,
            "a transaction has 1 to {ENTRIES_PER_TXN_MAX} entries, not {}",
            entries.len()
        );
        assert!(
            entries.iter().all(|e| e.amount_coins != 0),
            "an entry moves coins"
        );
        let sum: i128 = entries.iter().map(|e| e.amount_coins as i128).sum();
        assert_eq!(sum, 0, "entries must sum to zero: {entries:?}");
        for e in &entries {
            let kind = e.kind();
            assert!(
                kind.may_go_negative()
                    || matches!(kind, AccountKind::Wallet | AccountKind::Packet)
                    || e.amount_coins > 0,
                "only wallets, packets, receivables and external accounts are ever debited: {e:?}"
            );
        }
        Posting { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// What applying a top-up does, decided from what the user owes before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopUpPlan {
    /// Coins that repay the user's debt; the rest reaches the wallet.
    pub repaid_coins: u64,
    pub posting: Posting,
}

/// A top-up: the channel's external account pays the user's debt (`owed_coins`) first and the
/// wallet for that channel with the rest.
pub fn top_up(req: &TopUpRequest, owed_coins: u64) -> TopUpPlan {
    assert!(req.coins > 0 && req.coins <= TOP_UP_COINS_MAX);
    let repaid_coins = req.coins.min(owed_coins);
    let mut entries = vec![Entry {
        account: external_account(req.channel).to_owned(),
        amount_coins: -(req.coins as i64),
        channel: req.channel,
    }];
    if repaid_coins > 0 {
        entries.push(Entry {
            account: receivable_account(&req.user),
            amount_coins: repaid_coins as i64,
            channel: req.channel,
        });
    }
    if req.coins > repaid_coins {
        entries.push(Entry {
            account: wallet_account(&req.user, req.channel),
            amount_coins: (req.coins - repaid_coins) as i64,
            channel: req.channel,
        });
    }
    TopUpPlan {
        repaid_coins,
        posting: Posting::new(entries),
    }
}

/// The top-up a refund reverses, as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub user: String,
    pub channel: Channel,
    pub coins: u64,
}

/// What reversing a top-up does, decided from the user's wallet before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    /// Coins taken from each wallet channel.
    pub taken_coins: ChannelCoins,
    /// Coins already spent, which become debt.
    pub debt_coins: u64,
    pub posting: Posting,
    /// The wallet per channel after the refund.
    pub balances_after: ChannelCoins,
}

impl RefundPlan {
    pub fn wallet_coins(&self) -> u64 {
        self.taken_coins.iter().sum()
    }
}

/// Plans the reversal of `purchase` against the user's `balances` (see the module doc): the
/// coins leave through the purchase's external account, taken from the purchase's channel, then
/// the others in `spend_order`, and what is missing becomes debt.
pub fn refund(purchase: &Purchase, balances: ChannelCoins, spend_order: &[Channel]) -> RefundPlan {
    assert!(purchase.coins > 0 && purchase.coins <= TOP_UP_COINS_MAX);
    let order = std::iter::once(purchase.channel).chain(
        spend_order
            .iter()
            .copied()
            .filter(|c| *c != purchase.channel),
    );
    let mut taken_coins = [0u64; 3];
    let mut left = purchase.coins;
    for ch in order {
        let take = left.min(balances[ch.index()] - taken_coins[ch.index()]);
        taken_coins[ch.index()] += take;
        left -= take;
    }
    let debt_coins = left;
    let mut entries = Vec::with_capacity(REFUND_ENTRIES_MAX);
    entries.push(Entry {
        account: external_account(purchase.channel).to_owned(),
        amount_coins: purchase.coins as i64,
        channel: purchase.channel,
    });
    for ch in Channel::ALL {
        if taken_coins[ch.index()] > 0 {
            entries.push(Entry {
                account: wallet_account(&purchase.user, ch),
                amount_coins: -(taken_coins[ch.index()] as i64),
                channel: ch,
            });
        }
    }
    if debt_coins > 0 {
        entries.push(Entry {
            account: receivable_account(&purchase.user),
            amount_coins: -(debt_coins as i64),
            channel: purchase.channel,
        });
    }
    let mut balances_after = balances;
    for i in 0..3 {
        balances_after[i] = balances[i]
            .checked_sub(taken_coins[i])
            .expect("a refund never takes more than a wallet channel holds");
    }
    assert_eq!(
        taken_coins.iter().sum::<u64>() + debt_coins,
        purchase.coins,
        "a refund reverses exactly the purchase"
    );
    assert!(
        debt_coins == 0 || balances_after.iter().all(|b| *b == 0),
        "debt only once the wallet is empty"
    );
    RefundPlan {
        taken_coins,
        debt_coins,
        posting: Posting::new(entries),
        balances_after,
    }
}

/// What applying a gift does, decided from the sender's balances before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiftPlan {
    /// Coins drawn from each wallet channel.
    pub funding_coins: ChannelCoins,
    pub split: Split,
    pub posting: Posting,
    /// The sender's wallet per channel after the gift.
    pub balances_after: ChannelCoins,
}

impl GiftPlan {
    pub fn balance_after_coins(&self) -> u64 {
        self.balances_after.iter().sum()
    }
}

/// The spending cap in force for a user: their own cap or the default, and for a minor never more
/// than the minor cap.
pub fn cap_coins(policy: &CapPolicy, limits: &UserLimits) -> u64 {
    let own = limits.window_coins_max.unwrap_or(policy.window_coins_max);
    if limits.minor {
        own.min(policy.minor_window_coins_max)
    } else {
        own
    }
}

/// What a sender may still spend, as read (under the sender's lock) when a gift is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub cap_coins: u64,
    /// Coins spent on gifts within the window ending now, including earlier gifts of the batch.
    pub spent_coins: u64,
}

impl Allowance {
    pub fn new(policy: &CapPolicy, limits: &UserLimits, spent_coins: u64) -> Allowance {
        Allowance {
            cap_coins: cap_coins(policy, limits),
            spent_coins,
        }
    }

    /// Refuses a price beyond what is left, with what is left.
    fn check(&self, price_coins: u64) -> Result<()> {
        let remaining_coins = self.cap_coins.saturating_sub(self.spent_coins);
        if price_coins > remaining_coins {
            return Err(Error::SpendingCapExceeded {
                cap_coins: self.cap_coins,
                remaining_coins,
                price_coins,
            });
        }
        Ok(())
    }
}

/// Plans a gift against the sender's committed `balances` (per channel) and spending
/// `allowance`, or refuses it with [`Error::SpendingCapExceeded`] (checked first: a capped user
/// learns about the cap, not about topping up) or [`Error::InsufficientFunds`]. The plan debits
/// the wallet channels in the spend order and credits store, streamer and platform per channel.
pub fn gift(req: &GiftRequest, balances: ChannelCoins, allowance: Allowance) -> Result<GiftPlan> {
    allowance.check(req.price_coins)?;
    let total: u64 = balances.iter().sum();
    let Some(funding) = draw(balances, req.price_coins, &req.policy.spend_order) else {
        return Err(Error::InsufficientFunds {
            balance_coins: total,
            price_coins: req.price_coins,
        });
    };
    let parts = split(
        funding,
        req.policy.store_fees,
        req.policy.streamer_share_bps,
    );
    assert_eq!(
        parts.total_coins(),
        req.price_coins,
        "shares must sum to the price"
    );
    let mut balances_after = balances;
    for i in 0..3 {
        balances_after[i] = balances[i]
            .checked_sub(funding[i])
            .expect("a gift never draws more than a wallet channel holds");
    }
    let streamer = streamer_account(&req.streamer);
    let mut entries = Vec::with_capacity(ENTRIES_PER_TXN_MAX);
    for ch in Channel::ALL {
        let i = ch.index();
        if funding[i] > 0 {
            entries.push(Entry {
                account: wallet_account(&req.sender, ch),
                amount_coins: -(funding[i] as i64),
                channel: ch,
            });
        }
        for (account, coins) in [
            (store_account(ch), parts.store_by_channel[i]),
            (streamer.as_str(), parts.streamer_by_channel[i]),
            (PLATFORM, parts.platform_by_channel[i]),
        ] {
            if coins > 0 {
                entries.push(Entry {
                    account: account.to_owned(),
                    amount_coins: coins as i64,
                    channel: ch,
                });
            }
        }
    }
    Ok(GiftPlan {
        funding_coins: funding,
        split: parts,
        posting: Posting::new(entries),
        balances_after,
    })
}

/// Moves `coins` from one account per channel to another, channel by channel.
fn transfer(
    from: impl Fn(Channel) -> String,
    to: impl Fn(Channel) -> String,
    coins: ChannelCoins,
) -> Posting {
    let mut entries = Vec::with_capacity(6);
    for ch in Channel::ALL {
        let c = coins[ch.index()];
        if c > 0 {
            entries.push(Entry {
                account: from(ch),
                amount_coins: -(c as i64),
                channel: ch,
            });
            entries.push(Entry {
                account: to(ch),
                amount_coins: c as i64,
                channel: ch,
            });
        }
    }
    Posting::new(entries)
}

/// What dropping a red packet does: the sender's coins move to the packet's accounts, one per
/// channel, so they keep the channel they were bought through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketPlan {
    pub funding_coins: ChannelCoins,
    pub posting: Posting,
    pub balances_after: ChannelCoins,
}

/// Plans a red packet's drop against the sender's `balances` and `allowance` (a drop is
/// spending, so it counts against the cap), or refuses it as a gift would be refused.
pub fn drop_packet(
    req: &super::PacketDrop,
    packet_id: &str,
    balances: ChannelCoins,
    allowance: Allowance,
) -> Result<PacketPlan> {
    allowance.check(req.total_coins)?;
    let Some(funding) = draw(balances, req.total_coins, &req.spend_order) else {
        return Err(Error::InsufficientFunds {
            balance_coins: balances.iter().sum(),
            price_coins: req.total_coins,
        });
    };
    let mut balances_after = balances;
    for (after, drawn) in balances_after.iter_mut().zip(funding) {
        *after -= drawn;
    }
    let posting = transfer(
        |ch| wallet_account(&req.sender, ch),
        |ch| packet_account(packet_id, ch),
        funding,
    );
    Ok(PacketPlan {
        funding_coins: funding,
        posting,
        balances_after,
    })
}

/// The order in which a share is drawn from a packet's channels: a fixed one, so that a grab's
/// channels follow from the ledger alone.
pub const GRAB_ORDER: [Channel; 3] = [Channel::Web, Channel::Android, Channel::Ios];

/// A grab: `coins` leave the packet for the grabber's wallet, from what is `left` of each of the
/// packet's channels in [`GRAB_ORDER`], so grabbed coins keep the channel the sender bought them
/// through and pay that channel's store fee when they are spent.
pub fn grab(
    packet_id: &str,
    user: &str,
    left: ChannelCoins,
    coins: u64,
) -> (ChannelCoins, Posting) {
    let taken = draw(left, coins, &GRAB_ORDER).expect("a packet holds every share not yet grabbed");
    let posting = transfer(
        |ch| packet_account(packet_id, ch),
        |ch| wallet_account(user, ch),
        taken,
    );
    (taken, posting)
}

/// An expiry: what is `left` in the packet returns to the sender's wallet, channel by channel;
/// `None` when nothing is left.
pub fn packet_return(packet_id: &str, sender: &str, left: ChannelCoins) -> Option<Posting> {
    (left.iter().sum::<u64>() > 0).then(|| {
        transfer(
            |ch| packet_account(packet_id, ch),
            |ch| wallet_account(sender, ch),
            left,
        )
    })
}

/// Changes to hot accounts (see the module doc), summed over a batch and written once per
/// account just before the commit.
#[derive(Debug, Default)]
pub struct BatchSums {
    by_account: HashMap<String, i64>,
}

impl BatchSums {
    /// Adds a hot-account entry.
    pub fn add(&mut self, entry: &Entry) {
        let kind = entry.kind();
        assert!(kind.is_hot(), "wallets are applied at once: {entry:?}");
        assert!(
            kind.is_external() || entry.amount_coins > 0,
            "internal hot accounts are only credited: {entry:?}"
        );
        *self.by_account.entry(entry.account.clone()).or_insert(0) += entry.amount_coins;
    }

    pub fn is_empty(&self) -> bool {
        self.by_account.is_empty()
    }

    /// The summed changes, sorted by account (a fixed lock order for backends that lock rows).
    pub fn drain_sorted(&mut self) -> Vec<(String, i64)> {
        let mut sums: Vec<(String, i64)> = self.by_account.drain().collect();
        sums.sort_unstable();
        sums
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gift::StoreFees;
    use crate::ledger::{GiftPurpose, SplitPolicy};
    use proptest::prelude::*;

    const UNCAPPED: Allowance = Allowance {
        cap_coins: u64::MAX,
        spent_coins: 0,
    };

    pub(crate) fn caps() -> CapPolicy {
        CapPolicy {
            window_ms: 86_400_000,
            window_coins_max: 1_000_000,
            minor_window_coins_max: 5_000,
        }
    }

    fn request(price_coins: u64, fees: StoreFees, share: u32, order: Vec<Channel>) -> GiftRequest {
        GiftRequest {
            sender: "v".into(),
            streamer: "star".into(),
            room: "r".into(),
            sticker: "s".into(),
            price_coins,
            idempotency_key: "k".into(),
            purpose: GiftPurpose::Sticker,
            policy: SplitPolicy {
                store_fees: fees,
                streamer_share_bps: share,
                spend_order: order,
            },
            caps: caps(),
        }
    }

    #[test]
    fn the_cap_in_force_is_the_users_own_or_the_default_and_a_minor_never_exceeds_the_minor_cap() {
        let p = caps();
        let own = |cap, minor| UserLimits {
            window_coins_max: cap,
            minor,
        };
        assert_eq!(cap_coins(&p, &own(None, false)), 1_000_000);
        assert_eq!(cap_coins(&p, &own(Some(20), false)), 20);
        assert_eq!(cap_coins(&p, &own(None, true)), 5_000);
        assert_eq!(cap_coins(&p, &own(Some(20), true)), 20);
        assert_eq!(cap_coins(&p, &own(Some(9_000), true)), 5_000);
    }

    #[test]
    fn a_gift_over_the_remaining_allowance_is_refused_with_what_is_left() {
        let req = request(
            100,
            StoreFees {
                ios: 0,
                android: 0,
                web: 0,
            },
            5000,
            Channel::ALL.to_vec(),
        );
        let allowance = Allowance {
            cap_coins: 250,
            spent_coins: 160,
        };
        assert_eq!(
            gift(&req, [1_000, 0, 0], allowance),
            Err(Error::SpendingCapExceeded {
                cap_coins: 250,
                remaining_coins: 90,
                price_coins: 100
            })
        );
        let spent = Allowance {
            cap_coins: 250,
            spent_coins: 300,
        };
        assert!(matches!(
            gift(&req, [1_000, 0, 0], spent),
            Err(Error::SpendingCapExceeded {
                remaining_coins: 0,
                ..
            })
        ));
        let exact = Allowance {
            cap_coins: 260,
            spent_coins: 160,
        };
        assert!(gift(&req, [1_000, 0, 0], exact).is_ok());
        // A zero cap (a minor who may not spend) refuses even the cheapest sticker.
        let zero = Allowance {
            cap_coins: 0,
            spent_coins: 0,
        };
        let rose = request(
            1,
            StoreFees {
                ios: 0,
                android: 0,
                web: 0,
            },
            5000,
            Channel::ALL.to_vec(),
        );
        assert!(gift(&rose, [1_000, 0, 0], zero).is_err());
    }

    #[test]
    fn account_kinds() {
        assert_eq!(AccountKind::of("wallet:v:ios"), Some(AccountKind::Wallet));
        assert_eq!(AccountKind::of("store:web"), Some(AccountKind::Store));
        assert_eq!(AccountKind::of("store:moon"), None);
        assert_eq!(AccountKind::of("platform"), Some(AccountKind::Platform));
        assert_eq!(AccountKind::of("streamer:"), None);
        assert!(AccountKind::of("external:android").unwrap().is_external());
    }

    #[test]
    fn top_up_moves_coins_from_outside_into_the_wallet() {
        let req = TopUpRequest {
            user: "v".into(),
            channel: Channel::Web,
            coins: 7,
            purchase_id: "p".into(),
        };
        let p = top_up(&req, 0).posting;
        let e: Vec<_> = p
            .entries()
            .iter()
            .map(|e| (e.account.as_str(), e.amount_coins))
            .collect();
        assert_eq!(e, [("external:web", -7), ("wallet:v:web", 7)]);
    }

    #[test]
    #[should_panic(expected = "entries must sum to zero")]
    fn unbalanced_entries_stop_the_writer() {
        Posting::new(vec![Entry {
            account: PLATFORM.into(),
            amount_coins: 1,
            channel: Channel::Web,
        }]);
    }

    fn channel_order() -> impl Strategy<Value = Vec<Channel>> {
        Just(Channel::ALL.to_vec()).prop_shuffle()
    }

    proptest! {
        #[test]
        fn a_gift_posts_balanced_entries_that_match_its_split(
            balances in proptest::array::uniform3(0u64..5_000),
            price in 1u64..12_000,
            fee_ios in 0u32..=10_000, fee_android in 0u32..=10_000, fee_web in 0u32..=10_000,
            share in 0u32..=10_000,
            order in channel_order(),
        ) {
            let fees = StoreFees { ios: fee_ios, android: fee_android, web: fee_web };
            let req = request(price, fees, share, order);
            let total: u64 = balances.iter().sum();
            match gift(&req, balances, UNCAPPED) {
                Err(Error::InsufficientFunds { balance_coins, price_coins }) => {
                    prop_assert!(total < price);
                    prop_assert_eq!((balance_coins, price_coins), (total, price));
                }
                Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                Ok(plan) => {
                    prop_assert!(total >= price);
                    let entries = plan.posting.entries();
                    prop_assert_eq!(entries.iter().map(|e| e.amount_coins).sum::<i64>(), 0);
                    prop_assert_eq!(plan.funding_coins.iter().sum::<u64>(), price);
                    prop_assert_eq!(plan.split.total_coins(), price);
                    prop_assert_eq!(plan.balance_after_coins(), total - price);
                    let by = |pred: &dyn Fn(&Entry) -> bool| -> i64 {
                        entries.iter().filter(|e| pred(e)).map(|e| e.amount_coins).sum()
                    };
                    for ch in Channel::ALL {
                        let i = ch.index();
                        prop_assert!(plan.funding_coins[i] <= balances[i]);
                        prop_assert_eq!(plan.balances_after[i], balances[i] - plan.funding_coins[i]);
                        prop_assert_eq!(
                            -by(&|e| e.kind() == AccountKind::Wallet && e.channel == ch),
                            plan.funding_coins[i] as i64
                        );
                    }
                    prop_assert_eq!(by(&|e| e.kind() == AccountKind::Store), plan.split.store_coins as i64);
                    prop_assert_eq!(by(&|e| e.account == "streamer:star"), plan.split.streamer_coins as i64);
                    prop_assert_eq!(by(&|e| e.account == PLATFORM), plan.split.platform_coins as i64);
                    let mut sums = BatchSums::default();
                    for e in entries.iter().filter(|e| e.kind().is_hot()) {
                        sums.add(e);
                    }
                    let credited: i64 = sums.drain_sorted().iter().map(|(_, c)| c).sum();
                    prop_assert_eq!(credited, price as i64);
                }
            }
        }

        #[test]
        fn a_top_up_posts_balanced_entries(coins in 1u64..=TOP_UP_COINS_MAX, ch in 0usize..3) {
            let req = TopUpRequest {
                user: "u".into(),
                channel: Channel::ALL[ch],
                coins,
                purchase_id: "p".into(),
            };
            let p = top_up(&req, 0).posting;
            prop_assert_eq!(p.entries().iter().map(|e| e.amount_coins).sum::<i64>(), 0);
            prop_assert_eq!(p.entries()[1].amount_coins, coins as i64);
        }

        #[test]
        fn a_top_up_repays_debt_first(coins in 1u64..10_000, owed in 0u64..10_000) {
            let req = TopUpRequest {
                user: "u".into(),
                channel: Channel::Ios,
                coins,
                purchase_id: "p".into(),
            };
            let plan = top_up(&req, owed);
            let entries = plan.posting.entries();
            prop_assert_eq!(entries.iter().map(|e| e.amount_coins).sum::<i64>(), 0);
            prop_assert_eq!(plan.repaid_coins, coins.min(owed));
            let to = |kind: AccountKind| -> i64 {
                entries.iter().filter(|e| e.kind() == kind).map(|e| e.amount_coins).sum()
            };
            prop_assert_eq!(to(AccountKind::Receivable), plan.repaid_coins as i64);
            prop_assert_eq!(to(AccountKind::Wallet), (coins - plan.repaid_coins) as i64);
        }

        #[test]
        fn a_refund_reverses_the_purchase_exactly_from_the_wallet_then_as_debt(
            coins in 1u64..10_000,
            balances in proptest::array::uniform3(0u64..5_000),
            ch in 0usize..3,
            order in channel_order(),
        ) {
            let purchase = Purchase { user: "u".into(), channel: Channel::ALL[ch], coins };
            let plan = refund(&purchase, balances, &order);
            let entries = plan.posting.entries();
            prop_assert_eq!(entries.iter().map(|e| e.amount_coins).sum::<i64>(), 0);
            let total: u64 = balances.iter().sum();
            prop_assert_eq!(plan.wallet_coins(), coins.min(total));
            prop_assert_eq!(plan.debt_coins, coins.saturating_sub(total));
            // The purchase's own channel is drawn first.
            prop_assert_eq!(plan.taken_coins[ch], coins.min(balances[ch]));
            for (i, balance) in balances.iter().enumerate() {
                prop_assert!(plan.taken_coins[i] <= *balance);
                prop_assert_eq!(plan.balances_after[i], balance - plan.taken_coins[i]);
            }
            let sum = |kind: AccountKind| -> i64 {
                entries.iter().filter(|e| e.kind() == kind).map(|e| e.amount_coins).sum()
            };
            prop_assert_eq!(sum(AccountKind::External), coins as i64);
            prop_assert_eq!(sum(AccountKind::Receivable), -(plan.debt_coins as i64));
        }

        #[test]
        fn a_sequence_of_gifts_never_spends_past_the_cap(
            cap in 0u64..2_000,
            prices in proptest::collection::vec(1u64..600, 1..30),
        ) {
            // As a backend decides a batch: each gift sees the spending the previous ones left.
            let mut spent = 0;
            for price in prices {
                let req = request(price, StoreFees { ios: 0, android: 0, web: 0 }, 5000, Channel::ALL.to_vec());
                match gift(&req, [100_000, 0, 0], Allowance { cap_coins: cap, spent_coins: spent }) {
                    Ok(_) => spent += price,
                    Err(Error::SpendingCapExceeded { remaining_coins, cap_coins, .. }) => {
                        prop_assert_eq!((remaining_coins, cap_coins), (cap - spent, cap));
                        prop_assert!(price > remaining_coins);
                    }
                    Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                }
                prop_assert!(spent <= cap);
            }
        }

        #[test]
        fn a_red_packet_moves_every_coin_once_keeping_its_channels(
            balances in proptest::array::uniform3(0u64..400),
            shares in 1u64..20,
            extra in 0u64..300,
            grabs in 0usize..25,
            seed: u64,
        ) {
            use rand::SeedableRng;
            let total = shares + extra;
            let req = crate::ledger::PacketDrop {
                sender: "s".into(),
                room: "r".into(),
                total_coins: total,
                shares,
                key: "k".into(),
                expires_ms: 0,
                spend_order: Channel::ALL.to_vec(),
                caps: caps(),
            };
            let Ok(plan) = drop_packet(&req, "p", balances, UNCAPPED) else {
                prop_assert!(balances.iter().sum::<u64>() < total);
                return Ok(());
            };
            // Balances of every account touched, as a backend would keep them.
            let mut book: HashMap<String, i64> = HashMap::new();
            let mut apply = |p: &Posting| {
                assert_eq!(p.entries().iter().map(|e| e.amount_coins).sum::<i64>(), 0);
                for e in p.entries() {
                    *book.entry(e.account.clone()).or_default() += e.amount_coins;
                }
            };
            apply(&plan.posting);
            let cut = crate::gift::red_packet::cut(total, shares, &mut rand::rngs::StdRng::seed_from_u64(seed));
            let mut left = plan.funding_coins;
            let mut grabbed = 0;
            for (i, coins) in cut.iter().take(grabs).enumerate() {
                let (taken, posting) = grab("p", &format!("g{i}"), left, *coins);
                prop_assert_eq!(taken.iter().sum::<u64>(), *coins);
                for c in 0..3 {
                    left[c] -= taken[c];
                }
                apply(&posting);
                grabbed += coins;
            }
            if let Some(p) = packet_return("p", "s", left) {
                apply(&p);
            }
            let sum = |prefix: &str| -> i64 {
                book.iter().filter(|(a, _)| a.starts_with(prefix)).map(|(_, v)| v).sum()
            };
            prop_assert_eq!(sum("packet:"), 0);
            prop_assert_eq!(sum("wallet:g"), grabbed as i64);
            prop_assert_eq!(sum("wallet:s:"), -(grabbed as i64));
            prop_assert!(book.values().all(|v| *v >= -(total as i64)));
            prop_assert!(book.iter().filter(|(a, _)| a.starts_with("packet:")).all(|(_, v)| *v == 0));
        }

        #[test]
        fn a_batch_of_gifts_never_overdraws(
            start in proptest::array::uniform3(0u64..300),
            prices in proptest::collection::vec(1u64..200, 1..20),
        ) {
            // Applying plans in sequence, each on the balances the previous one left, as a
            // backend does within a batch: no channel ever goes below zero.
            let mut balances = start;
            let mut spent = 0;
            for price in prices {
                let req = request(price, StoreFees { ios: 3000, android: 3000, web: 0 }, 5000, Channel::ALL.to_vec());
                if let Ok(plan) = gift(&req, balances, UNCAPPED) {
                    balances = plan.balances_after;
                    spent += price;
                }
            }
            prop_assert_eq!(balances.iter().sum::<u64>() + spent, start.iter().sum::<u64>());
        }
    }
}
