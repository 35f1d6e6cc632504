//! The bank invariant under concurrency.
//!
//! Many viewers gift at once in two rooms while top-ups (some of them replayed) land,
//! purchases are reversed (refunds and chargebacks, some replayed, many of coins already spent)
//! and red packets are dropped and grabbed by the gifting viewers from second connections,
//! and a checker reads the ledger read-only, over and over, in its own connection (SQLite's WAL or
//! PostgreSQL's snapshots let it read while the writer commits). At every read, in one
//! consistent snapshot:
//!
//!   wallets + streamer earnings + stores + platform + red packets - debts
//!     == top-ups - refunds == -(external accounts)
//!
//! and no non-external balance is negative, no receivable positive. At the end, with everything quiet, the same totals
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
/// Viewers whose first purchase is reversed while they gift.
const REVERSED_VIEWERS: usize = 6;
/// Red packets dropped into room `bank-a` while the viewers gift.
const PACKETS: usize = 5;
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

    server.top_up("dropper", "android", 3_000, "init-dropper").await;
    topped.insert("dropper".into(), 3_000);
    topup_total += 3_000;

    let stop = Arc::new(AtomicBool::new(false));
    let checker = tokio::spawn(checker(LedgerDb::open(&server.config).await, stop.clone()));

    // Top-ups landing while gifts run; every third one is sent twice (a store retry).
    let topups = {
        let server = server.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x70b0);
        tokio::spawn(async move {
            let mut credited: Vec<(String, u64, u64)> = Vec::new();
            let mut reversed: Vec<Value> = Vec::new();
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
                credited.push((user, coins, r["repaid_coins"].as_u64().unwrap()));
                if i % 5 == 4 {
                    let (status, f) = server.refund(&pid, "refund").await;
                    assert_eq!(status, 200, "{f}");
                    reversed.push(f);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
            }
            (credited, reversed)
        })
    };

    // First purchases reversed while their viewers gift; every other one is sent twice.
    let reversals = {
        let server = server.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7ef0);
        tokio::spawn(async move {
            let mut reversed: Vec<Value> = Vec::new();
            for v in 0..REVERSED_VIEWERS {
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                let reason = if v % 2 == 0 { "refund" } else { "chargeback" };
                let (status, f) = server.refund(&format!("init-{v}"), reason).await;
                assert_eq!((status, f["replayed"].as_bool()), (200, Some(false)), "{f}");
                if v % 2 == 1 {
                    let (_, again) = server.refund(&format!("init-{v}"), reason).await;
                    assert_eq!((again["replayed"].as_bool(), &again["txn_id"]), (Some(true), &f["txn_id"]));
                }
                reversed.push(f);
            }
            reversed
        })
    };

    // Red packets: each is grabbed at once by every viewer, each from a second connection.
    let packets = {
        let server = server.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9ac7);
        tokio::spawn(async move {
            let mut dropper = server.viewer("dropper").await;
            dropper.join("bank-a").await;
            let mut grabbers = Vec::new();
            for v in 0..VIEWERS {
                let mut c = server.viewer(&format!("viewer{v}")).await;
                c.join("bank-a").await;
                grabbers.push((format!("viewer{v}"), c));
            }
            let mut dropped = 0u64;
            let mut grabbed: Vec<(String, u64)> = Vec::new();
            for i in 0..PACKETS {
                let total = rng.random_range(50..600);
                let shares = rng.random_range(3..12);
                let body = json!({ "type": "drop_red_packet", "total_coins": total, "shares": shares, "key": format!("rp{i}") });
                let r = dropper.request(body).await.unwrap();
                dropped += total;
                let packet_id = r["packet_id"].as_str().unwrap().to_owned();
                let grabs = grabbers.iter_mut().map(|(user, c)| {
                    let packet_id = packet_id.clone();
                    async move {
                        let r = c.request(json!({ "type": "grab_red_packet", "packet_id": packet_id })).await;
                        (user.clone(), r)
                    }
                });
                let mut shares_taken = 0;
                for (user, r) in futures_util::future::join_all(grabs).await {
                    match r {
                        Ok(g) => {
                            shares_taken += 1;
                            grabbed.push((user, g["coins"].as_u64().unwrap()));
                        }
                        Err(e) => assert_eq!(e["reason"], "red_packet_empty", "{e}"),
                    }
                }
                assert_eq!(shares_taken, shares.min(VIEWERS as u64));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
            }
            (dropped, grabbed)
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
    // Per user: coins that reached the wallet (top-ups less what repaid debt) and left it
    // (reversals), and debt taken on and repaid.
    let mut repaid: HashMap<String, u64> = HashMap::new();
    let (credited, mut reversed) = topups.await.unwrap();
    for (user, coins, repaid_coins) in credited {
        *topped.entry(user.clone()).or_default() += coins;
        *repaid.entry(user).or_default() += repaid_coins;
        topup_total += coins;
    }
    reversed.extend(reversals.await.unwrap());
    let (dropped, grabs) = packets.await.unwrap();
    let mut grabbed: HashMap<String, u64> = HashMap::new();
    for (user, coins) in grabs {
        *grabbed.entry(user).or_default() += coins;
    }
    let mut taken: HashMap<String, u64> = HashMap::new();
    let mut debt: HashMap<String, u64> = HashMap::new();
    let mut refund_total = 0u64;
    for f in &reversed {
        let user = f["user"].as_str().unwrap().to_owned();
        *taken.entry(user.clone()).or_default() += f["wallet_coins"].as_u64().unwrap();
        *debt.entry(user).or_default() += f["debt_coins"].as_u64().unwrap();
        refund_total += f["coins"].as_u64().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, last) = checker.await.unwrap();

    // Quiet now: the final snapshot, the admin API and the client receipts must all agree.
    let db = LedgerDb::open(&server.config).await;
    let end = read_totals(&db).await;
    check(&end);
    assert_eq!(end.topups as u64, topup_total);
    assert_eq!(end.refunds as u64, refund_total);
    assert!(end.gifts >= last.gifts);

    let mut wallets_api = 0u64;
    let mut owed_api = 0u64;
    let mut gift_ids = HashSet::new();
    let mut receipts = 0u64;
    let mut replays = 0u64;
    for (user, seen) in &all {
        let spent: u64 = seen
            .receipts
            .iter()
            .map(|r| r["price_coins"].as_u64().unwrap())
            .sum();
        let get = |m: &HashMap<String, u64>| m.get(user).copied().unwrap_or(0);
        let w = server.wallet(user).await;
        let (balance, owed) = (
            w["balance_coins"].as_u64().unwrap(),
            w["owed_coins"].as_u64().unwrap(),
        );
        assert_eq!(
            balance + get(&taken) + spent + get(&repaid),
            topped[user] + get(&grabbed),
            "{user}: balance disagrees with its receipts"
        );
        assert_eq!(owed + get(&repaid), get(&debt), "{user}: debt disagrees with its receipts");
        wallets_api += balance;
        owed_api += owed;
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
    let dropper = server.balance("dropper").await;
    assert_eq!(dropper + dropped, 3_000, "the dropper paid for every packet, once");
    wallets_api += dropper;
    let packets_left = dropped - grabbed.values().sum::<u64>();
    assert_eq!(packets_left as i64, end.packets);
    let earnings = server.wallet("star").await["earnings_coins"]
        .as_u64()
        .unwrap()
        + server.wallet("nova").await["earnings_coins"]
            .as_u64()
            .unwrap();
    assert_eq!(earnings as i64, end.streamers);
    assert_eq!(wallets_api as i64, end.wallets);
    assert_eq!(owed_api as i64, -end.receivables);
    assert_eq!(
        wallets_api + earnings + end.stores as u64 + end.platform as u64 + packets_left,
        topup_total - refund_total + owed_api
    );

    let report = db.audit().await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.gifts, receipts);
    let insufficient: u64 = all.values().map(|s| s.insufficient).sum();
    eprintln!(
        "bank: {reads} consistent reads during the run; {receipts} gifts ({} coins), {replays} key replays, \
         {insufficient} refused for funds, {} top-ups ({topup_total} coins), {} reversed \
         ({refund_total} coins, {} became debt)",
        end.gifted,
        report.topups,
        reversed.len(),
        debt.values().sum::<u64>()
    );
    assert!(reads > 0, "the checker never read the ledger");
}
}
