//! Red packets: how a packet's total is cut into shares, as a pure function with property tests.
//!
//! A packet of `total_coins` in `shares` shares is cut when it is dropped, and the cut is recorded
//! in the ledger, so who gets how much depends only on the order of the grabs, never on timing
//! or on which node serves them: the k-th grabber gets share k.
//!
//! The rule is "double mean": while `remaining` coins are left for `left` shares, the next share
//! is drawn uniformly from `1 ..= max(1, min(2 × remaining ÷ left, remaining − (left − 1)))`
//! (integer division), and the last share takes what is left. So the shares sum exactly to the
//! total, each is at least 1 coin, each is at most twice the mean of what was left when it was
//! drawn (the last one included, as it is the whole mean), and no draw can leave a later share
//! without its coin.

use rand::Rng;

/// The upper bound of the next share while `remaining` coins are left for `left` shares.
pub fn share_max(remaining: u64, left: u64) -> u64 {
    assert!(left >= 1 && remaining >= left, "every share needs a coin");
    if left == 1 {
        return remaining;
    }
    (2 * remaining / left).min(remaining - (left - 1)).max(1)
}

/// Cuts `total_coins` into `shares` shares by the double-mean rule, drawing with `rng`.
pub fn cut(total_coins: u64, shares: u64, rng: &mut impl Rng) -> Vec<u64> {
    assert!(
        shares >= 1 && total_coins >= shares,
        "every share needs a coin"
    );
    let mut out = Vec::with_capacity(shares as usize);
    let mut remaining = total_coins;
    for left in (1..=shares).rev() {
        let coins = if left == 1 {
            remaining
        } else {
            rng.random_range(1..=share_max(remaining, left))
        };
        out.push(coins);
        remaining -= coins;
    }
    assert_eq!(remaining, 0, "the shares sum to the total");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn one_share_takes_everything_and_one_coin_each_is_the_only_cut() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(cut(77, 1, &mut rng), vec![77]);
        assert_eq!(cut(5, 5, &mut rng), vec![1; 5]);
    }

    proptest! {
        #[test]
        fn shares_sum_to_the_total_each_at_least_one_and_within_the_double_mean(
            shares in 1u64..300,
            extra in 0u64..100_000,
            seed: u64,
        ) {
            let total = shares + extra;
            let cut = cut(total, shares, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(cut.len() as u64, shares);
            prop_assert_eq!(cut.iter().sum::<u64>(), total);
            let mut remaining = total;
            for (i, coins) in cut.iter().enumerate() {
                let left = shares - i as u64;
                prop_assert!(*coins >= 1);
                prop_assert!(*coins <= share_max(remaining, left));
                prop_assert!(*coins <= (2 * remaining / left).max(1) || left == 1);
                remaining -= coins;
            }
        }
    }
}
