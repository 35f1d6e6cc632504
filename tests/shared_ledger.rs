//! Two giftd nodes on one PostgreSQL ledger.
//!
//! The nodes share nothing but the ledger (rooms stay per node): each test opens the same room
//! on both. What must hold across nodes:
//!
//! 1. The same idempotency key sent to both nodes at the same moment debits once: one node
//!    applies it, the other replays the same receipt (or, racing inside one batch, loses the
//!    race and decides again), and neither answers with an error.
//! 2. Many viewers gifting through both nodes while a checker reads totals keep the bank
//!    invariant at every read: balances and credits sum to the top-ups, nothing is negative.
//! 3. A PostgreSQL that becomes unreachable: gifts are refused with `ledger_unavailable`, no
//!    receipt is sent without a commit, `/readyz` goes unready, and the node recovers by itself.
//! 4. A spending cap holds for a user gifting through both nodes at once, and a purchase
//!    reversed on one node while its user gifts on both is taken exactly once: what was spent
//!    by then becomes debt, the rest leaves the wallet.
//! 5. A red packet grabbed through both nodes at once gives each share to one user, each user
//!    at most one share, and what is left returns to the sender once although both nodes sweep.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use giftd::config::LedgerBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::ledger::{check, checker, read_totals, LedgerDb};
use support::proxy::Proxy;
use support::TestServer;

/// Two nodes on one fresh PostgreSQL schema. The first holds the schema's guard, so it is
/// returned first and must be dropped last.
async fn two_nodes() -> (TestServer, TestServer) {
    let a = TestServer::start().await;
    assert_eq!(a.config.ledger.backend, LedgerBackend::Postgres);
    let b = TestServer::start_in(tempfile::tempdir().unwrap(), a.config.clone()).await;
    (a, b)
}

async fn viewer_in_room(server: &TestServer, user: &str) -> support::Client {
    let mut c = server.viewer(user).await;
    c.join("r").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_two_nodes_at_once_debits_once() {
    support::ledger::on(LedgerBackend::Postgres, async {
        let (a, b) = two_nodes().await;
        a.top_up("bob", "web", 10_000, "w1").await;
        let mut stars = Vec::new();
        for node in [&a, &b] {
            let mut star = node.streamer("star").await;
            star.open_room("r", "t").await;
            stars.push(star);
        }
        const ROUNDS: usize = 30;
        let mut on_a = viewer_in_room(&a, "bob").await;
        let mut on_b = viewer_in_room(&b, "bob").await;
        for round in 0..ROUNDS {
            let key = format!("k{round}");
            let (ra, rb) = tokio::join!(
                on_a.send_gift("coffee", &key),
                on_b.send_gift("coffee", &key)
            );
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(ra["gift_id"], rb["gift_id"], "{ra} {rb}");
            let fresh = [&ra, &rb].iter().filter(|r| r["replayed"] == false).count();
            assert_eq!(fresh, 1, "exactly one node applied {key}: {ra} {rb}");
        }
        let expected = 10_000 - 100 * ROUNDS as u64;
        assert_eq!(a.balance("bob").await, expected);
        assert_eq!(b.balance("bob").await, expected);
        let db = LedgerDb::open(&a.config).await;
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert_eq!(report.gifts, ROUNDS as u64);
        drop(b);
        drop(a);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_two_nodes_keep_the_bank_invariant_at_every_read() {
    support::ledger::on(LedgerBackend::Postgres, async {
        const VIEWERS: usize = 16;
        const GIFTS_PER_VIEWER: usize = 40;
        let seed: u64 = rand::random();
        eprintln!("cluster: seed {seed}");
        let (a, b) = two_nodes().await;
        let (a, b) = (Arc::new(a), Arc::new(b));
        let mut stars = Vec::new();
        for node in [&a, &b] {
            let mut star = node.streamer("star").await;
            star.open_room("r", "t").await;
            stars.push(star);
        }
        let mut topped = 0u64;
        for v in 0..VIEWERS {
            let node = if v % 2 == 0 { &a } else { &b };
            node.top_up(&format!("v{v}"), ["ios", "android", "web"][v % 3], 1_500, &format!("p{v}"))
                .await;
            topped += 1_500;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let checking = tokio::spawn(checker(LedgerDb::open(&a.config).await, stop.clone()));
        let started = Instant::now();
        let loads = (0..VIEWERS).map(|v| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(v as u64));
                let user = format!("v{v}");
                let mut clients = [viewer_in_room(&a, &user).await, viewer_in_room(&b, &user).await];
                let mut spent = 0u64;
                for g in 0..GIFTS_PER_VIEWER {
                    let (sticker, price) = [("rose", 1), ("clap", 10), ("coffee", 100)][rng.random_range(0..3)];
                    let key = format!("{user}-{g}");
                    let node = rng.random_range(0..2);
                    // Now and then the same key goes to the other node too, as a retry would.
                    let both = rng.random_bool(0.2);
                    let first = clients[node].send_gift(sticker, &key).await;
                    let second = if both {
                        Some(clients[1 - node].send_gift(sticker, &key).await)
                    } else {
                        None
                    };
                    match first {
                        Ok(r) => {
                            assert_eq!(r["replayed"], false, "{r}");
                            spent += price;
                            if let Some(again) = second {
                                let again = again.unwrap();
                                assert_eq!((again["replayed"].clone(), again["gift_id"].clone()), (json!(true), r["gift_id"].clone()));
                            }
                        }
                        Err(e) => {
                            assert_eq!(e["reason"], "insufficient_funds", "{e}");
                            if let Some(again) = second {
                                assert_eq!(again.unwrap_err()["reason"], "insufficient_funds");
                            }
                        }
                    }
                }
                (user, spent)
            }
        });
        let spent = join_all(loads).await;
        stop.store(true, Ordering::Relaxed);
        let (reads, _) = checking.await.unwrap();
        assert!(reads > 0, "the checker never read the ledger");
        let db = LedgerDb::open(&a.config).await;
        let end = read_totals(&db).await;
        check(&end);
        assert_eq!(end.topups as u64, topped);
        let mut gifted = 0;
        for (user, spent) in &spent {
            assert_eq!(a.balance(user).await, 1_500 - spent, "{user}");
            gifted += spent;
        }
        assert_eq!(end.gifted as u64, gifted);
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        eprintln!(
            "cluster: {} gifts ({gifted} coins) through two nodes in {:.1} s; {reads} consistent reads",
            end.gifts,
            started.elapsed().as_secs_f64()
        );
        drop(b);
        drop(a);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_across_nodes_and_a_refund_races_gifts_on_both() {
    support::ledger::on(LedgerBackend::Postgres, async {
        let a = TestServer::start_with(|c| c.spending.window_coins_max = 1_000).await;
        assert_eq!(a.config.ledger.backend, LedgerBackend::Postgres);
        let b = TestServer::start_in(tempfile::tempdir().unwrap(), a.config.clone()).await;
        let mut stars = Vec::new();
        for node in [&a, &b] {
            let mut star = node.streamer("star").await;
            star.open_room("r", "t").await;
            stars.push(star);
        }
        a.top_up("bob", "web", 5_000, "w1").await;
        a.top_up("carol", "ios", 600, "c1").await;
        let mut clients = Vec::new();
        for (node, user) in [(&a, "bob"), (&b, "bob"), (&a, "carol"), (&b, "carol")] {
            clients.push((user, viewer_in_room(node, user).await));
        }
        // Each of bob's connections pipelines 10 coffees (2,000 coins asked, a 1,000 cap); each
        // of carol's 10 claps while her purchase is charged back through node b.
        let runs = clients
            .into_iter()
            .enumerate()
            .map(|(n, (user, mut c))| async move {
                let sticker = if user == "bob" { "coffee" } else { "clap" };
                let mut ids = Vec::new();
                for i in 0..10 {
                    let key = format!("{user}-{n}-{i}");
                    ids.push(
                        c.send(json!({ "type": "send_gift", "sticker": sticker, "key": key }))
                            .await,
                    );
                }
                let mut results = Vec::new();
                for id in ids {
                    results.push((user, c.reply(id).await));
                }
                results
            });
        let (results, (status, refund)) =
            tokio::join!(join_all(runs), b.refund("c1", "chargeback"));
        assert_eq!(status, 200, "{refund}");
        let mut bob_ok = 0;
        let mut carol_spent = 0;
        for (user, r) in results.into_iter().flatten() {
            match (user, r) {
                ("bob", Ok(_)) => bob_ok += 1,
                ("bob", Err(e)) => assert_eq!(e["reason"], "spending_cap_exceeded", "{e}"),
                (_, Ok(r)) => carol_spent += r["price_coins"].as_u64().unwrap(),
                (_, Err(e)) => assert_eq!(e["reason"], "insufficient_funds", "{e}"),
            }
        }
        assert_eq!(
            bob_ok, 10,
            "exactly the cap's worth of gifts, across both nodes"
        );
        assert_eq!(b.balance("bob").await, 4_000);
        assert_eq!(b.limits("bob").await["spent_coins"], 1_000);
        // Carol's 600 coins: what she had spent when the chargeback committed became debt.
        let (wallet, debt) = (
            refund["wallet_coins"].as_u64().unwrap(),
            refund["debt_coins"].as_u64().unwrap(),
        );
        assert_eq!(wallet + debt, 600);
        let w = a.wallet("carol").await;
        assert_eq!(w["owed_coins"].as_u64(), Some(debt));
        assert_eq!(
            w["balance_coins"].as_u64().unwrap() + wallet + carol_spent,
            600
        );
        let db = LedgerDb::open(&a.config).await;
        check(&read_totals(&db).await);
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        drop(b);
        drop(a);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_red_packet_is_grabbed_once_per_share_and_returned_once_from_two_nodes() {
    support::ledger::on(LedgerBackend::Postgres, async {
        let a = TestServer::start_with(|c| {
            c.red_packets.expiry_ms = 1_500;
            c.red_packets.sweep_interval_ms = 100;
        })
        .await;
        let b = TestServer::start_in(tempfile::tempdir().unwrap(), a.config.clone()).await;
        let mut stars = Vec::new();
        for node in [&a, &b] {
            let mut star = node.streamer("star").await;
            star.open_room("r", "t").await;
            stars.push(star);
        }
        a.top_up("bob", "web", 1_000, "w1").await;
        let mut bob = viewer_in_room(&a, "bob").await;
        let drop_body = |total: u64, shares: u64, key: &str| {
            json!({ "type": "drop_red_packet", "total_coins": total, "shares": shares, "key": key })
        };
        let full = bob.request(drop_body(300, 8, "rp1")).await.unwrap();
        let partial = bob.request(drop_body(200, 50, "rp2")).await.unwrap();
        // 20 users, each on both nodes, grab both packets at once.
        let mut clients = Vec::new();
        for u in 0..20 {
            for node in [&a, &b] {
                clients.push((format!("g{u}"), viewer_in_room(node, &format!("g{u}")).await));
            }
        }
        let ids = [full["packet_id"].clone(), partial["packet_id"].clone()];
        let runs = clients.into_iter().map(|(user, mut c)| {
            let ids = ids.clone();
            async move {
                let mut got = Vec::new();
                for id in &ids {
                    let r = c.request(json!({ "type": "grab_red_packet", "packet_id": id })).await;
                    got.push((user.clone(), id.clone(), r));
                }
                got
            }
        });
        let mut fresh: std::collections::HashMap<(String, String), u64> = Default::default();
        let mut shares: std::collections::HashSet<(String, u64)> = Default::default();
        for (user, id, r) in join_all(runs).await.into_iter().flatten() {
            match r {
                Ok(g) if g["replayed"] == true => {}
                Ok(g) => {
                    let key = (user.clone(), id.to_string());
                    assert!(fresh.insert(key, g["coins"].as_u64().unwrap()).is_none(), "{user} grabbed {id} twice");
                    assert!(shares.insert((id.to_string(), g["share_index"].as_u64().unwrap())), "share taken twice");
                }
                Err(e) => assert_eq!(e["reason"], "red_packet_empty", "{e}"),
            }
        }
        let of = |id: &serde_json::Value| -> (usize, u64) {
            let id = id.to_string();
            let mine: Vec<u64> = fresh
                .iter()
                .filter(|(k, _)| k.1 == id)
                .map(|(_, c)| *c)
                .collect();
            (mine.len(), mine.iter().sum())
        };
        assert_eq!(of(&ids[0]), (8, 300));
        let (taken, grabbed) = of(&ids[1]);
        assert_eq!(taken, 20, "every user got one share of the big packet");
        // Both nodes sweep; the rest of the second packet goes back once.
        let expected = 1_000 - 300 - grabbed;
        for _ in 0..100 {
            if a.balance("bob").await == expected {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(b.balance("bob").await, expected);
        let db = LedgerDb::open(&a.config).await;
        assert_eq!(db.ints("SELECT COUNT(*) FROM txns WHERE kind = 'packet_return'").await, vec![1]);
        check(&read_totals(&db).await);
        let report = db.audit().await;
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        drop(b);
        drop(a);
    })
    .await
}

async fn readyz(server: &TestServer) -> u16 {
    server.http("GET", "/readyz", None, None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_refuses_gifts_and_the_node_recovers_by_itself() {
    let schema = support::ledger::PgSchema::create();
    let pg: tokio_postgres::Config = schema.url.parse().unwrap();
    let host = match &pg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test database must be reached over TCP, not {other:?}"),
    };
    let target = format!("{host}:{}", pg.get_ports().first().copied().unwrap_or(5432));
    let proxy = Proxy::start(target.clone()).await;
    let url = schema.url.replacen(&target, &proxy.addr.to_string(), 1);
    assert_ne!(url, schema.url, "the URL names {target}");
    let server = TestServer::start_with(|c| {
        c.ledger.backend = LedgerBackend::Postgres;
        c.ledger.postgres_url = url;
        c.ledger.call_timeout_ms = 1_000;
    })
    .await;
    server.top_up("bob", "web", 1_000, "w1").await;
    let mut star = server.streamer("star").await;
    star.open_room("r", "t").await;
    let mut bob = viewer_in_room(&server, "bob").await;
    bob.send_gift("coffee", "k1").await.unwrap();
    assert_eq!(readyz(&server).await, 200);

    proxy.cut();
    let e = bob.send_gift("coffee", "k2").await.unwrap_err();
    assert_eq!(e["reason"], "ledger_unavailable", "{e}");
    assert_eq!(readyz(&server).await, 503);
    let e = bob.send_gift("coffee", "k2").await.unwrap_err();
    assert_eq!(e["reason"], "ledger_unavailable", "{e}");

    proxy.heal();
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while readyz(&server).await != 200 {
        assert!(Instant::now() < deadline, "the node did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = bob.send_gift("coffee", "k2").await.unwrap();
    assert_eq!(
        r["replayed"], false,
        "k2 was refused, so it had not been charged: {r}"
    );
    assert_eq!(r["balance_coins"], 800);
    assert_eq!(server.balance("bob").await, 800);
    let direct = giftd::config::Config {
        ledger: giftd::config::LedgerConfig {
            backend: LedgerBackend::Postgres,
            postgres_url: schema.url.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let report = LedgerDb::open(&direct).await.audit().await;
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.gifts, 2);
    drop(server);
    drop(proxy);
}

/// Noting 1,000 gifts' room seqs reads the array once, however many gifts the ledger holds.
/// Prepared statements get a generic plan, which guesses 10 elements for an array; the seqs were
/// once an `UPDATE gifts … FROM unnest(…)` whose plan found the gifts first and re-read the whole
/// array for each of them (a join filter: a million comparisons, 0.47 s per batch).
#[tokio::test]
async fn noting_gift_seqs_reads_the_array_once_under_a_generic_plan() {
    use giftd::ledger::postgres::{connect, NOTE_GIFT_SEQS};
    use giftd::ledger::Ledger;

    const NOTED: usize = 1_000;
    const GIFTS: usize = 20_000;
    let schema = support::ledger::PgSchema::create();
    // Opening migrates the schema.
    schema.ledger(16).await.close().await;
    let client = connect(&schema.url).await.unwrap();
    // Not analyzed since, like a busy ledger whose statistics lag its newest gifts: this is how
    // the old statement's plan went wrong under load.
    client
        .batch_execute(&format!(
            "BEGIN;
             SET LOCAL enable_seqscan = off;
             SET LOCAL plan_cache_mode = force_generic_plan;
             INSERT INTO gifts (txn_id, gift_id, room, sender, streamer, sticker, price_coins,
                 store_coins, streamer_coins, platform_coins, funding_ios, funding_android,
                 funding_web, balance_coins, created_ms)
             SELECT i, 'g' || i, 'r', 'v' || (i % 64), 'star', 'coffee', 10, 3, 5, 2, 0, 0, 10, 0, i
             FROM generate_series(1, {GIFTS}) AS i;
             PREPARE note (TEXT[], BIGINT[]) AS {NOTE_GIFT_SEQS};"
        ))
        .await
        .unwrap();
    let ids: Vec<String> = (1..=NOTED).map(|i| format!("'g{i}'")).collect();
    let seqs: Vec<String> = (1..=NOTED).map(|i| i.to_string()).collect();
    let explain = format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE note (ARRAY[{}]::TEXT[], ARRAY[{}]::BIGINT[])",
        ids.join(","),
        seqs.join(",")
    );
    let rows = client.simple_query(&explain).await.unwrap();
    let plan: serde_json::Value = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .map(|text| serde_json::from_str(&text).unwrap())
        .expect("a plan");
    client.batch_execute("ROLLBACK").await.unwrap();

    // Every node of the plan: how often the array was read, and what joins threw away.
    let mut nodes = vec![&plan[0]["Plan"]];
    let (mut array_reads, mut filtered, mut noted) = (0, 0, 0);
    while let Some(node) = nodes.pop() {
        if node["Node Type"] == "Function Scan" {
            array_reads += node["Actual Loops"].as_u64().unwrap();
            noted += node["Actual Rows"].as_u64().unwrap();
        }
        filtered += node["Rows Removed by Join Filter"].as_u64().unwrap_or(0);
        nodes.extend(node["Plans"].as_array().into_iter().flatten());
    }
    assert_eq!(array_reads, 1, "the array is read once: {plan:#}");
    assert_eq!(filtered, 0, "no join compares every pair: {plan:#}");
    assert_eq!(noted, NOTED as u64, "every seq noted: {plan:#}");
}

/// A wallet that is new in a batch and nets to zero in it (topped up and spent in full by the
/// same batch) still gets its account row. Once, the writer skipped zero-net wallets, so their
/// entries named an account that did not exist and the audit failed now and then.
#[tokio::test]
async fn a_wallet_topped_up_and_spent_within_one_batch_is_still_an_account() {
    use giftd::config::Config;
    use giftd::ledger::{GiftPurpose, GiftRequest, Ledger, SplitPolicy, TopUpRequest};

    let schema = support::ledger::PgSchema::create();
    let ledger = schema.ledger(1024).await;
    let split = Config::default().split;
    let policy = SplitPolicy {
        store_fees: split.store_fee_bps,
        streamer_share_bps: split.streamer_share_bps_default,
        spend_order: split.spend_order.clone(),
    };
    // Each pair is sent together, the top-up first, so most pairs share a batch.
    let pairs = (0..40).map(|i| {
        let (ledger, policy) = (&ledger, policy.clone());
        async move {
            let user = format!("fresh{i}");
            let top_up = ledger.top_up(TopUpRequest {
                user: user.clone(),
                channel: giftd::gift::Channel::Web,
                coins: 100,
                purchase_id: format!("p{i}"),
            });
            let gift = ledger.gift(GiftRequest {
                sender: user,
                streamer: "star".into(),
                room: "r".into(),
                sticker: "coffee".into(),
                price_coins: 100,
                idempotency_key: format!("k{i}"),
                purpose: GiftPurpose::Sticker,
                policy,
                caps: giftd::ledger::CapPolicy {
                    window_ms: 86_400_000,
                    window_coins_max: 1_000_000,
                    minor_window_coins_max: 0,
                },
            });
            let (t, _) = tokio::join!(top_up, gift);
            t.unwrap();
        }
    });
    join_all(pairs).await;
    ledger.close().await;
    let report = giftd::ledger::audit::audit_postgres(&schema.url)
        .await
        .unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert_eq!(report.topups, 40);
}
