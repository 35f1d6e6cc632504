//! The three-way revenue split and the spending plan, in integer coins.
//!
//! # Spending order
//! A wallet holds coins per purchase channel. A gift draws coins channel by channel in the
//! configured `split.spend_order` (default: web, then android, then ios), taking as much as it can
//! from each before moving on.
//!
//! # The split
//! Coins drawn from channel `c` owe that channel's store fee `fee_c` (basis points). What remains
//! is divided between streamer and platform by the streamer's share `s` (basis points). The exact
//! shares of a gift of price `P` funded by `n_c` coins per channel are, with `D = 10^8`:
//!
//! ```text
//! store    = Σ n_c · fee_c · 10^4           / D
//! streamer = Σ n_c · (10^4 − fee_c) · s        / D
//! platform = Σ n_c · (10^4 − fee_c) · (10^4 − s) / D
//! ```
//!
//! They sum to `P` exactly but are fractional. [`apportion`] rounds them by the largest
//! remainder method: every part gets the floor of its exact share, and the units left over go one
//! each to the parts with the largest fractional remainders, ties going to the earlier part in the
//! order streamer, platform, store. So the parts always sum to `P` and each is within one coin of
//! its exact share (strictly less than one). A part whose exact share is zero gets zero.
//!
//! Each party's integer total is then apportioned over the channels by the same rule, so the
//! ledger and the metrics can say how much of each party's coins came from each channel.

use crate::gift::catalog::PRICE_COINS_MAX;
use crate::gift::{Channel, ChannelCoins, StoreFees};

const BPS: u128 = 10_000;

/// The result of splitting one gift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Split {
    pub store_coins: u64,
    pub streamer_coins: u64,
    pub platform_coins: u64,
    /// Each party's coins by source channel; each row sums to the party's total.
    pub store_by_channel: ChannelCoins,
    pub streamer_by_channel: ChannelCoins,
    pub platform_by_channel: ChannelCoins,
}

impl Split {
    pub fn total_coins(&self) -> u64 {
        self.store_coins + self.streamer_coins + self.platform_coins
    }
}

/// Splits a gift funded by `funding` (coins per channel) between store, streamer and platform.
///
/// # Panics
/// If a rate exceeds 10,000 bps or the price exceeds [`PRICE_COINS_MAX`]; config validation and
/// the catalog rule both out.
pub fn split(funding: ChannelCoins, fees: StoreFees, streamer_share_bps: u32) -> Split {
    let price_coins: u64 = funding.iter().sum();
    assert!(
        price_coins <= PRICE_COINS_MAX,
        "price {price_coins} over the maximum"
    );
    assert!(
        streamer_share_bps as u128 <= BPS,
        "streamer share over 100%"
    );
    let s = streamer_share_bps as u128;

    let mut store_w = [0u128; 3];
    let mut streamer_w = [0u128; 3];
    let mut platform_w = [0u128; 3];
    for ch in Channel::ALL {
        let fee = fees.bps(ch) as u128;
        assert!(fee <= BPS, "store fee over 100%");
        let n = funding[ch.index()] as u128;
        store_w[ch.index()] = n * fee * BPS;
        streamer_w[ch.index()] = n * (BPS - fee) * s;
        platform_w[ch.index()] = n * (BPS - fee) * (BPS - s);
    }
    let sum = |w: &[u128; 3]| w.iter().sum::<u128>();

    let mut parts = [0u64; 3];
    apportion(
        price_coins,
        &[sum(&streamer_w), sum(&platform_w), sum(&store_w)],
        &mut parts,
    );
    let [streamer_coins, platform_coins, store_coins] = parts;

    let mut out = Split {
        store_coins,
        streamer_coins,
        platform_coins,
        ..Split::default()
    };
    apportion(store_coins, &store_w, &mut out.store_by_channel);
    apportion(streamer_coins, &streamer_w, &mut out.streamer_by_channel);
    apportion(platform_coins, &platform_w, &mut out.platform_by_channel);

    assert_eq!(
        out.total_coins(),
        price_coins,
        "the split lost or made coins"
    );
    out
}

/// Divides `total` into `out.len()` integer parts proportional to `weights` by the largest
/// remainder method; ties go to the lower index. A zero weight always gets zero.
///
/// If every weight is zero, `total` must be zero.
pub fn apportion(total: u64, weights: &[u128], out: &mut [u64]) {
    assert_eq!(weights.len(), out.len());
    assert!(out.len() <= 8, "apportion is for a handful of parts");
    let weight_sum: u128 = weights.iter().sum();
    if weight_sum == 0 {
        assert_eq!(total, 0, "cannot apportion {total} over zero weights");
        out.fill(0);
        return;
    }
    let mut remainders = [(0u128, 0usize); 8];
    let mut given: u64 = 0;
    for (i, w) in weights.iter().enumerate() {
        let scaled = total as u128 * w;
        out[i] = (scaled / weight_sum) as u64;
        remainders[i] = (scaled % weight_sum, i);
        given += out[i];
    }
    let leftover = total - given;
    assert!(
        leftover < out.len() as u64 || out.is_empty(),
        "floors lost more than one unit per part"
    );
    let remainders = &mut remainders[..out.len()];
    // Largest remainder first; on equal remainders the lower index wins.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(rem, i) in remainders.iter().take(leftover as usize) {
        assert!(rem > 0, "a unit went to a part with no fractional share");
        out[i] += 1;
    }
}

/// Plans which coins pay for `price_coins`: channel by channel in `order`, as much as each holds.
/// Returns `None` when the balances do not cover the price.
pub fn draw(balances: ChannelCoins, price_coins: u64, order: &[Channel]) -> Option<ChannelCoins> {
    let mut plan = [0u64; 3];
    let mut remaining = price_coins;
    for ch in order {
        let take = balances[ch.index()].min(remaining);
        plan[ch.index()] = take;
        remaining -= take;
    }
    (remaining == 0).then_some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULT_FEES: StoreFees = StoreFees {
        ios: 3000,
        android: 3000,
        web: 0,
    };

    #[test]
    fn ios_gift_of_one_hundred_coins() {
        let s = split([100, 0, 0], DEFAULT_FEES, 5000);
        assert_eq!(
            (s.store_coins, s.streamer_coins, s.platform_coins),
            (30, 35, 35)
        );
        assert_eq!(s.store_by_channel, [30, 0, 0]);
    }

    /// The mixed-channel example of docs/PROTOCOL.md §6: rounded once over the whole gift.
    #[test]
    fn mixed_funding_is_rounded_over_the_whole_gift() {
        let s = split([2, 0, 1], DEFAULT_FEES, 5000);
        assert_eq!(
            (s.store_coins, s.streamer_coins, s.platform_coins),
            (1, 1, 1)
        );
    }

    #[test]
    fn one_coin_goes_to_the_largest_remainder() {
        // Exact shares 0.3 store, 0.35 streamer, 0.35 platform: the tie goes to the streamer.
        let s = split([1, 0, 0], DEFAULT_FEES, 5000);
        assert_eq!(
            (s.store_coins, s.streamer_coins, s.platform_coins),
            (0, 1, 0)
        );
    }

    #[test]
    fn web_coins_pay_no_store_fee() {
        let s = split([0, 0, 7], DEFAULT_FEES, 5000);
        assert_eq!(s.store_coins, 0);
        assert_eq!(s.streamer_coins + s.platform_coins, 7);
        assert_eq!((s.streamer_coins, s.platform_coins), (4, 3));
    }

    #[test]
    fn mixed_channel_gift_splits_exactly() {
        // 50 web coins (no fee) and 50 ios coins (30% fee): store 15, net 85 -> 42.5 / 42.5.
        let s = split([50, 0, 50], DEFAULT_FEES, 5000);
        assert_eq!(s.store_coins, 15);
        assert_eq!((s.streamer_coins, s.platform_coins), (43, 42));
        assert_eq!(s.store_by_channel, [15, 0, 0]);
        assert_eq!(s.streamer_by_channel.iter().sum::<u64>(), 43);
    }

    #[test]
    fn draw_follows_the_order() {
        let order = [Channel::Web, Channel::Android, Channel::Ios];
        assert_eq!(draw([10, 10, 10], 15, &order), Some([0, 5, 10]));
        assert_eq!(draw([10, 10, 10], 31, &order), None);
        assert_eq!(draw([10, 0, 0], 10, &order), Some([10, 0, 0]));
    }

    fn exact_numerators(funding: ChannelCoins, fees: StoreFees, s: u32) -> [u128; 3] {
        let s = s as u128;
        let mut n = [0u128; 3];
        for ch in Channel::ALL {
            let fee = fees.bps(ch) as u128;
            let c = funding[ch.index()] as u128;
            n[0] += c * fee * BPS;
            n[1] += c * (BPS - fee) * s;
            n[2] += c * (BPS - fee) * (BPS - s);
        }
        n
    }

    fn within_one(part: u64, numerator: u128, denominator: u128) -> bool {
        let scaled = part as u128 * denominator;
        scaled.abs_diff(numerator) < denominator
    }

    proptest! {
        #[test]
        fn parts_sum_to_price_and_stay_within_one_coin(
            ios in 0u64..200_000, android in 0u64..200_000, web in 0u64..200_000,
            fee_ios in 0u32..=10_000, fee_android in 0u32..=10_000, fee_web in 0u32..=10_000,
            share in 0u32..=10_000,
        ) {
            let fees = StoreFees { ios: fee_ios, android: fee_android, web: fee_web };
            let funding = [ios, android, web];
            let price = ios + android + web;
            let s = split(funding, fees, share);
            prop_assert_eq!(s.total_coins(), price);
            let [store_n, streamer_n, platform_n] = exact_numerators(funding, fees, share);
            let d = BPS * BPS;
            prop_assert!(within_one(s.store_coins, store_n, d));
            prop_assert!(within_one(s.streamer_coins, streamer_n, d));
            prop_assert!(within_one(s.platform_coins, platform_n, d));
            prop_assert_eq!(s.store_by_channel.iter().sum::<u64>(), s.store_coins);
            prop_assert_eq!(s.streamer_by_channel.iter().sum::<u64>(), s.streamer_coins);
            prop_assert_eq!(s.platform_by_channel.iter().sum::<u64>(), s.platform_coins);
            for ch in Channel::ALL {
                if funding[ch.index()] == 0 {
                    prop_assert_eq!(s.store_by_channel[ch.index()], 0);
                    prop_assert_eq!(s.streamer_by_channel[ch.index()], 0);
                    prop_assert_eq!(s.platform_by_channel[ch.index()], 0);
                }
            }
        }

        #[test]
        fn apportion_is_exact_and_fair(total in 0u64..1_000_000, weights in proptest::collection::vec(0u128..1_000_000, 1..6)) {
            let weight_sum: u128 = weights.iter().sum();
            prop_assume!(weight_sum > 0 || total == 0);
            let mut out = vec![0u64; weights.len()];
            apportion(total, &weights, &mut out);
            prop_assert_eq!(out.iter().sum::<u64>(), total);
            for (part, w) in out.iter().zip(&weights) {
                if weight_sum > 0 {
                    prop_assert!(within_one(*part, total as u128 * w, weight_sum));
                }
                if *w == 0 {
                    prop_assert_eq!(*part, 0);
                }
            }
        }

        #[test]
        fn draw_never_overspends(
            balances in proptest::array::uniform3(0u64..1_000), price in 0u64..3_500,
        ) {
            let order = [Channel::Web, Channel::Android, Channel::Ios];
            match draw(balances, price, &order) {
                Some(plan) => {
                    prop_assert_eq!(plan.iter().sum::<u64>(), price);
                    for i in 0..3 { prop_assert!(plan[i] <= balances[i]); }
                }
                None => prop_assert!(balances.iter().sum::<u64>() < price),
            }
        }
    }
}
