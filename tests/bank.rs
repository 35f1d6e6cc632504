//! The bank invariant under concurrency.
//!
//! Many viewers gift at once in two rooms while top-ups (some of them replayed) land, and a
//! checker reads the ledger read-only, over and over, in its own connection (SQLite's WAL or
//! PostgreSQL's snapshots let it read while the writer commits). At every read, in one
//! consistent snapshot:
//!
//!   wallets + streamer earnings + stores + platform == sum of top-ups == -(external accounts)
//!
//! and no non-external balance is negative. At the end, with everything quiet, the same totals
//! are checked through the admin API, every client receipt is matched against the ledger, and
//! `giftd::ledger::audit::audit` must report no violation.
//!
//! Runs on both ledger backends (`tests/support/ledger.rs`). `tests/shared_ledger.rs` runs the same
//! invariant with two nodes on one PostgreSQL ledger.
//!
//! Seeded: set `GIFTD_BANK_SEED` to replay a run; the seed in use is printed.

#[rustfmt::skip]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::ledger::{check, checker, lit, read_totals, LedgerDb};
use support::TestServer;

const VIEWERS: usize = 20;
const GIFTS_PER_VIEWER: usize = 50;
const EXTRA_TOPUPS: usize = 60;
const STICKERS: [(&str, u64); 5] = [
    ("rose", 1),
    ("heart", 5),
    ("clap", 10),
    ("coffee", 100),
    ("star", 500),
];

/// What a viewer's client saw: receipts of gifts it was charged for, and coins refused.
#[derive(Default)]
struct Seen {
    receipts: Vec<Value>,
    insufficient: u64,
    replays: u64,
}

on_both_ledgers! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_at_every_read_under_concurrent_gifts_and_top_ups() {
    let seed: u64 = std::env::var("GIFTD_BANK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("bank: seed {seed} (GIFTD_BANK_SEED={seed} replays this run)");
    let mut rng = StdRng::seed_from_u64(seed);

    let server = Arc::new(TestServer::start().await);
    let mut star = server.streamer("star").await;
    star.open_room("bank-a", "a").await;
    let mut nova = server.streamer("nova").await;
    nova.open_room("bank-b", "b").await;

    // Initial top-ups, spread over channels, so spend order and store fees differ per gift.
    let channels = ["ios", "android", "web"];
    let mut topped: HashMap<String, u64> = HashMap::new();
    let mut topup_total = 0u64;
    for v in 0..VIEWERS {
        let user = format!("viewer{v}");
        let coins = rng.random_range(500..5_000);
        let ch = channels[rng.random_range(0..3)];
        server.top_up(&user, ch, coins, &format!("init-{v}")).await;
        *topped.entry(user).or_default() += coins;
        topup_total += coins;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let checker = tokio::spawn(checker(LedgerDb::open(&server.config).await, stop.clone()));

    // Top-ups landing while gifts run; every third one is sent twice (a store retry).
    let topups = {
        let server = server.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x70b0);
        tokio::spawn(async move {
            let mut credited: Vec<(String, u64)> = Vec::new();
            for i in 0..EXTRA_TOPUPS {
                let user = format!("viewer{}", rng.random_range(0..VIEWERS));
                let coins = rng.random_range(1..500);
                let ch = ["ios", "android", "web"][rng.random_range(0..3)];
                let pid = format!("extra-{i}");
                let r = server.top_up(&user, ch, coins, &pid).await;
                assert_eq!(r["replayed"], false);
                if i % 3 == 0 {
                    let again = server.top_up(&user, ch, coins, &pid).await;
                    assert_eq!(again["replayed"], true);
                    assert_eq!(again["txn_id"], r["txn_id"]);
                }
                credited.push((user, coins));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
            }
            credited
        })
    };

    let mut viewers = Vec::new();
    for v in 0..VIEWERS {
        let server = server.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(v as u64 + 1));
        viewers.push(tokio::spawn(async move {
            let user = format!("viewer{v}");
            let room = if v % 2 == 0 { "bank-a" } else { "bank-b" };
            let mut c = server.viewer(&user).await;
            c.join(room).await;
            let mut seen = Seen::default();
            // Pipeline a few gifts at a time; some keys are resent while still in flight.
            let mut sent = 0;
            while sent < GIFTS_PER_VIEWER {
                let n = rng.random_range(1..=4).min(GIFTS_PER_VIEWER - sent);
                let mut ids = Vec::new();
                for k in 0..n {
                    let (sticker, _) = STICKERS[rng.random_range(0..STICKERS.len())];
                    let key = format!("{user}-g{}", sent + k);
                    let body = json!({ "type": "send_gift", "sticker": sticker, "key": key });
                    ids.push(c.send(body.clone()).await);
                    if rng.random_bool(0.1) {
                        ids.push(c.send(body).await);
                    }
                }
                for id in ids {
                    match c.reply(id).await {
                        Ok(r) if r["replayed"] == true => seen.replays += 1,
                        Ok(r) => seen.receipts.push(r),
                        Err(e) if e["reason"] == "insufficient_funds" => seen.insufficient += 1,
                        Err(e) => panic!("{user}: unexpected error {e}"),
                    }
                }
                sent += n;
            }
            (user, seen)
        }));
    }

    let mut all: HashMap<String, Seen> = HashMap::new();
    for v in viewers {
        let (user, seen) = v.await.unwrap();
        all.insert(user, seen);
    }
    for (user, coins) in topups.await.unwrap() {
        *topped.entry(user).or_default() += coins;
        topup_total += coins;
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, last) = checker.await.unwrap();

    // Quiet now: the final snapshot, the admin API and the client receipts must all agree.
    let db = LedgerDb::open(&server.config).await;
    let end = read_totals(&db).await;
    check(&end);
    assert_eq!(end.topups as u64, topup_total);
    assert!(end.gifts >= last.gifts);

    let mut wallets_api = 0u64;
    let mut gift_ids = HashSet::new();
    let mut receipts = 0u64;
    let mut replays = 0u64;
    for (user, seen) in &all {
        let spent: u64 = seen
            .receipts
            .iter()
            .map(|r| r["price_coins"].as_u64().unwrap())
            .sum();
        let balance = server.balance(user).await;
        assert_eq!(
            balance,
            topped[user] - spent,
            "{user}: balance disagrees with its receipts"
        );
        wallets_api += balance;
        for r in &seen.receipts {
            let id = r["gift_id"].as_str().unwrap().to_owned();
            let rows = db
                .rows(&format!(
                    "SELECT sender, price_coins FROM gifts WHERE gift_id = {}",
                    lit(&id)
                ))
                .await;
            assert_eq!(
                rows,
                vec![vec![user.clone(), r["price_coins"].to_string()]],
                "receipt {id} in the ledger"
            );
            assert!(gift_ids.insert(id), "a gift id was issued twice");
        }
        receipts += seen.receipts.len() as u64;
        replays += seen.replays;
    }
    assert_eq!(
        end.gifts as u64, receipts,
        "gifts in the ledger without a receipt"
    );
    let earnings = server.wallet("star").await["earnings_coins"]
        .as_u64()
        .unwrap()
        + server.wallet("nova").await["earnings_coins"]
            .as_u64()
            .unwrap();
    assert_eq!(earnings as i64, end.streamers);
    assert_eq!(wallets_api as i64, end.wallets);
    assert_eq!(
        wallets_api + earnings + end.stores as u64 + end.platform as u64,
        topup_total
    );

    let report = db.audit().await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.gifts, receipts);
    let insufficient: u64 = all.values().map(|s| s.insufficient).sum();
    eprintln!(
        "bank: {reads} consistent reads during the run; {receipts} gifts ({} coins), {replays} key replays, \
         {insufficient} refused for funds, {} top-ups ({topup_total} coins)",
        end.gifted,
        report.topups
    );
    assert!(reads > 0, "the checker never read the ledger");
}
}
